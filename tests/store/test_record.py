"""The MLflow store going away: short outages are retried, a store that stays down makes the run's
record go to a local journal, and `imagebench relog` writes it into the store once it is back."""

import json
import socket
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from imagebench.core import plots
from imagebench.store import record
from imagebench import store
from imagebench.cli import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_OK, main
from imagebench.sweep.outcomes import notebook_problem


def _closed_port_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: a tracking server that is down


@pytest.fixture
def store_down(monkeypatch):
    """Call it to take the tracking server down (MLflow's own HTTP retries off, our patience short)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "0.3")
    uri = _closed_port_uri()
    return lambda: monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)


def test_a_short_outage_is_retried_and_a_long_one_is_named(monkeypatch):
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "5")
    answers = iter([RuntimeError("database is locked"), RuntimeError("database is locked"), "written"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert store.with_retries(flaky) == "written"

    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "0.2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/mlflow.db")
    with pytest.raises(store.StoreUnavailable) as caught:
        store.with_retries(lambda: (_ for _ in ()).throw(RuntimeError("Connection refused")))
    assert "sqlite:////somewhere/mlflow.db" in str(caught.value) and store.ENV_STORE_PATIENCE in str(caught.value)
    with pytest.raises(ValueError, match="Changing param"):  # a real error is not waited on
        store.with_retries(lambda: (_ for _ in ()).throw(ValueError("Changing param values is not allowed")))

    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "soon")
    with pytest.raises(ValueError, match="IMAGEBENCH_STORE_PATIENCE='soon'"):
        store.with_retries(lambda: 1)


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in store.client().get_metric_history(run_id, key)]


def test_a_store_down_mid_run_is_journaled_and_relogged_without_loss(project, store_down, capsys):
    store_uri = store.tracking_uri()
    run_id = store.create_trial_run("outage", "001-trial", {}, None)
    folder = project / "results" / "outage" / "runs" / "001-trial.record"
    recorder = record.RunRecorder(run_id, folder)
    recorder.log_batch(params={"learning_rate": 0.007, "dense_units": [512, 256]})
    recorder.log_epoch_metrics({"val/accuracy": 0.5}, step=1)  # the first epoch is sent at once
    assert not recorder.journal.exists() and not (folder / record.UNSENT).exists()  # nothing journaled while the store answers
    assert _history(run_id, "val/accuracy") == [(1, 0.5)]

    store_down()
    recorder.log_epoch_metrics({"val/accuracy": 0.75}, step=2)  # held (within EPOCH_SEND_SECONDS), kept in UNSENT
    recorder.log_epoch_metrics({"val/accuracy": 0.875}, step=3)
    assert not recorder.offline and len((folder / record.UNSENT).read_text().splitlines()) == 2
    recorder.log_files({store.ARTIFACT_REPORT: record.text_file("precision recall")})  # sends the held epochs first: down
    assert recorder.offline and "still unavailable" in str(recorder.store_error) and not (folder / record.UNSENT).exists()
    figure = Figure()
    figure.subplots().plot([1, 2, 3])
    recorder.log_files({store.ARTIFACT_CURVES_PNG: record.bytes_file(plots.png_bytes(figure))})
    recorder.set_tags({store.TAG_EPOCH_BUDGET: 3})
    recorder.end("FINISHED")
    message = str(recorder.unavailable())
    assert str(recorder.journal) in message and f"imagebench relog {folder}" in message

    header, entries = record.read_journal(recorder.journal)
    assert header["run_id"] == run_id
    assert [entry["op"] for entry in entries] == ["batch", "batch", "artifact", "artifact", "batch", "end"]
    assert (folder / "artifacts" / store.ARTIFACT_CURVES_PNG).stat().st_size > 1000

    # the store the journal names is still down: a clear error, the journal kept
    assert main(["relog", str(folder)]) == EXIT_ENVIRONMENT
    assert "still unavailable" in capsys.readouterr().err and recorder.journal.exists()

    with store.using_store(store_uri):  # back (here: the store that holds the run)
        assert main(["relog", str(project / "results"), "--store", store_uri]) == EXIT_OK
        assert "re-logged run" in capsys.readouterr().out
        run = store.client().get_run(run_id)
        assert run.info.status == "FINISHED"
        assert _history(run_id, "val/accuracy") == [(1, 0.5), (2, 0.75), (3, 0.875)]
        assert run.data.params["dense_units"] == "512,256" and run.data.tags[store.TAG_EPOCH_BUDGET] == "3"
        assert "6 entries" in run.data.tags[store.TAG_RELOGGED]
        artifacts = {item.path for item in store.client().list_artifacts(run_id)}
        assert {store.ARTIFACT_REPORT, store.ARTIFACT_CURVES_PNG} <= artifacts
        assert not recorder.journal.exists() and list(folder.glob("journal.relogged-*.jsonl"))

        assert main(["relog", str(folder)]) == EXIT_OK  # nothing left: says so
        assert "nothing to re-log" in capsys.readouterr().out
        # replaying the same journal again (a relog interrupted and run twice) adds nothing
        replayed = next(folder.glob("journal.relogged-*.jsonl"))
        again = folder / record.JOURNAL
        again.write_text(replayed.read_text())
        record.relog(again, store_uri)
        assert _history(run_id, "val/accuracy") == [(1, 0.5), (2, 0.75), (3, 0.875)]


def test_a_store_lost_while_sending_an_artifact_keeps_the_file_itself(project, store_down):
    store_uri = store.tracking_uri()
    run_id = store.create_trial_run("outage", "003-trial", {}, None)
    recorder = record.RunRecorder(run_id, project / "rec")
    store_down()
    recorder.log_files({store.ARTIFACT_REPORT: record.text_file("kept, not lost with a temporary folder")})
    _header, entries = record.read_journal(recorder.journal)
    # kept inside the record folder, named relative to it: the folder may travel (from a Ray node)
    assert [entry["file"] for entry in entries] == [f"artifacts/{store.ARTIFACT_REPORT}"]
    moved = project / "moved"
    (project / "rec").rename(moved)
    with store.using_store(store_uri):
        record.relog(moved / record.JOURNAL, store_uri)
        path = store.client().download_artifacts(run_id, store.ARTIFACT_REPORT, str(project))
        assert Path(path).read_text() == "kept, not lost with a temporary folder"


def test_a_journal_cut_short_or_for_a_missing_run_is_reported(project, tmp_path, capsys):
    run_id = store.create_trial_run("outage", "002-trial", {}, None)
    header = {"op": "run", "run_id": run_id, "store": store.tracking_uri(), "reason": "down"}
    metrics = {"op": "metrics", "values": {"val/loss": 1.5}, "step": 1, "timestamp": 1700000000000}
    cut = tmp_path / "cut" / record.JOURNAL
    cut.parent.mkdir()
    cut.write_text(json.dumps(header) + "\n" + json.dumps(metrics) + "\n" + '{"op": "metr')  # killed mid-line
    assert record.relog(cut).entries == 1  # everything before the cut line counts
    assert _history(run_id, "val/loss") == [(1, 1.5)]

    damaged = tmp_path / "damaged" / record.JOURNAL
    damaged.parent.mkdir()
    damaged.write_text(json.dumps(header) + "\nnot json\n" + json.dumps(metrics) + "\n")
    with pytest.raises(record.RelogError, match=r"journal.jsonl:2: not a journal line"):
        record.relog(damaged)

    unknown = tmp_path / "unknown" / record.JOURNAL
    unknown.parent.mkdir()
    unknown.write_text(json.dumps({**header, "run_id": "0" * 32}) + "\n")
    assert main(["relog", str(unknown.parent)]) == EXIT_BAD_INPUT
    assert f"run {'0' * 32} is not in the store" in capsys.readouterr().err
    assert unknown.exists()  # kept for a relog into the right store


def test_a_half_written_notebook_is_never_attached(tmp_path):
    import nbformat

    whole = tmp_path / "whole.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), whole)
    assert notebook_problem(whole) is None
    cut = tmp_path / "cut.ipynb"
    cut.write_bytes(whole.read_bytes()[:40])  # what a full disk leaves
    assert "incomplete" in notebook_problem(cut)
    device = tmp_path / "device.ipynb"
    device.symlink_to("/dev/full")
    assert "not a regular file" in notebook_problem(device)
    assert "no output notebook" in notebook_problem(tmp_path / "missing.ipynb")


def test_commands_facing_a_store_that_is_down_say_so_and_exit_3(project, store_down, capsys):
    store_down()
    assert main(["trial", "--set", "dataset=digits", "--set", "epochs=1"]) == EXIT_ENVIRONMENT
    assert main(["leaderboard", "--experiment", "anything"]) == EXIT_ENVIRONMENT
    errors = capsys.readouterr().err
    assert errors.count("still unavailable") == 2 and store.ENV_STORE_PATIENCE in errors
    assert "Traceback" not in errors


def test_a_trial_keeps_its_record_beside_its_notebook_or_under_results(project, monkeypatch):
    monkeypatch.delenv(record.ENV_RECORD_DIR, raising=False)
    assert record.record_folder("flowers", "torch-cnn-20261123") == project / "results" / "flowers" / "runs" / "torch-cnn-20261123.record"
    monkeypatch.setenv(record.ENV_RECORD_DIR, str(project / "results" / "sweep" / "runs" / "001.record"))
    assert record.record_folder("flowers", "ignored") == project / "results" / "sweep" / "runs" / "001.record"


def test_held_epoch_metrics_keep_their_steps_and_times_and_a_dead_kernels_are_sent_later(project):
    run_id = store.create_trial_run("held", "001-trial", {}, None)
    folder = project / "results" / "held" / "runs" / "001-trial.record"
    recorder = record.RunRecorder(run_id, folder)
    for step in range(1, 5):
        recorder.log_epoch_metrics({"val/accuracy": step / 10}, step=step)
        time.sleep(0.01)
    assert _history(run_id, "val/accuracy") == [(1, 0.1)]  # the first at once, the rest held
    held = [json.loads(line) for line in (folder / record.UNSENT).read_text().splitlines()]
    assert [entry["step"] for entry in held] == [2, 3, 4]

    # the kernel dies here, mid-way through writing a fifth line: the sweep's recorder sends the rest
    with (folder / record.UNSENT).open("a") as handle:
        handle.write('{"op": "batch", "step": 5, "metrics": {"val/accuracy": 0.5}')
    assert record.RunRecorder(run_id, folder).send_unsent() == 3
    history = store.client().get_metric_history(run_id, "val/accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert [m.timestamp for m in history][1:] == [entry["timestamp"] for entry in held]  # stamped when trained, not when sent
    assert not (folder / record.UNSENT).exists()


def test_a_patience_is_waited_out_once_and_not_overrun(monkeypatch):
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "1")
    for _ in range(3):  # the jitter differs each time: the wait must not
        started = time.monotonic()
        with pytest.raises(store.StoreUnavailable):
            store.with_retries(lambda: (_ for _ in ()).throw(RuntimeError("Connection refused")))
        assert 1.0 <= time.monotonic() - started < 1.2


def test_a_run_that_journaled_asks_the_store_once_and_at_once(project, store_down, monkeypatch):
    from types import SimpleNamespace

    from imagebench.executors import Job
    from imagebench.sweep.outcomes import OutcomeRecorder

    run_id = store.create_trial_run("outage", "004-trial", {}, None)
    job = Job(trial=SimpleNamespace(name="004-trial"), open_run=lambda: run_id, output=project / "004-trial.ipynb", run_id=run_id)
    journaled, clean = job.record_dir, project / "clean.record"
    record.check_store_if_journaled(journaled)  # no journal: nothing has waited for the store yet
    recorder = OutcomeRecorder()
    recorder.ask_store_after([job])  # the store answers: nothing to say
    assert recorder.store_error is None

    store_down()
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "30")  # a second patience would show
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # and so would MLflow's own minutes of retries
    record.check_store_if_journaled(clean)  # still nothing to check: no store call, no wait
    trial = record.RunRecorder(run_id, journaled, store.StoreUnavailable("MLflow store X still unavailable after 30s"))
    trial.end("FINISHED")  # the trial's last write, journaled
    started = time.monotonic()
    with pytest.raises(store.StoreUnavailable, match="still unavailable after 30s"):  # the trial's reason
        record.check_store_if_journaled(journaled)
    recorder.ask_store_after([job])
    assert "still unavailable after 30s" in str(recorder.store_error)
    assert time.monotonic() - started < 2  # asked, not waited for: the trial already waited a patience


def test_a_trials_first_batch_rides_with_its_next_write_and_survives_a_kernel_dying_before_it(project):
    """The params and tags a trial writes as it starts are held (one round trip fewer per trial):
    sent with the next write in the same request, or by the sweep if the kernel dies first."""
    run_id = store.create_trial_run("first", "001-trial", {}, None)
    folder = project / "results" / "first" / "runs" / "001-trial.record"
    recorder = record.RunRecorder(run_id, folder)
    recorder.log_batch_later(params={"learning_rate": 0.01}, tags={"imagebench.kernel": "host:1"})
    assert not store.client().get_run(run_id).data.params and (folder / record.UNSENT).exists()
    sent = recorder.store_seconds
    recorder.log_batch(metrics={"data/classes": 10}, tags={"imagebench.model": "cnn"})
    run = store.client().get_run(run_id).data
    assert run.params == {"learning_rate": "0.01"} and run.metrics == {"data/classes": 10.0}
    assert run.tags["imagebench.kernel"] == "host:1" and run.tags["imagebench.model"] == "cnn"
    assert not (folder / record.UNSENT).exists() and recorder.store_seconds > sent

    # a kernel killed before its next write: the sweep's recorder sends the held batch
    other = store.create_trial_run("first", "002-trial", {}, None)
    dying = record.RunRecorder(other, project / "results" / "first" / "runs" / "002-trial.record")
    dying.log_batch_later(params={"learning_rate": 0.02})
    assert record.RunRecorder(other, dying.folder).send_unsent() == 1
    assert store.client().get_run(other).data.params == {"learning_rate": "0.02"}
