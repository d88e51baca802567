"""The shared tracking server (`python -m imagebench.server`, `make server`), for real: PostgreSQL
started from a throw-away folder, `mlflow server` on it, sweeps through papermill kernels against it.
A sweep with two workers loses nothing; a server stopped mid-sweep loses nothing either (journal,
exit 3, relog once it is back); a restart keeps every run; the database password is nowhere but
its own file."""

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from imagebench import server
from imagebench.server import postgres, service
from imagebench import store
from imagebench.core import metrics
from helpers import run_imagebench
from helpers import free_ports, inject_cell, wait_for, write_sweep_file

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _files_holding(text: str, *folders: Path) -> list[Path]:
    needle = text.encode()
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.name != server.PGPASS:
                try:
                    if needle in path.read_bytes():
                        found.append(path)
                except OSError:
                    continue  # a file PostgreSQL removed while we looked
    return found


def _repo_files() -> list[Path]:
    """The repository's own files (tracked and untracked, not ignored)."""
    repo = Path(__file__).resolve().parents[2]
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True)
    return [repo / name for name in listed.stdout.splitlines() if (repo / name).is_file()]


def _assert_complete_run(run_id: str) -> None:
    from helpers import assert_documented_record

    assert_documented_record(run_id, num_classes=10)  # every param, epoch metric (steps 1..), final metric, artifact
    client = store.client()
    for key in metrics.EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    notebooks = [item.path for item in client.list_artifacts(run_id, store.ARTIFACT_NOTEBOOK_DIR)]
    assert len(notebooks) == 1 and notebooks[0].endswith(".ipynb"), notebooks


def test_a_sweep_with_two_workers_against_the_server_loses_nothing(on_server, project):
    import psutil

    sweep_file = write_sweep_file(project, "shared", "{learning_rate: [0.001, 0.002, 0.003, 0.004]}")
    started = time.monotonic()
    done = run_imagebench("sweep", sweep_file, "--workers", "2", "--no-leaderboard", cwd=project)
    on_server.timings["sweep of 4 trials, 2 workers"] = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "done 4/4, failed 0" in done.stdout
    runs = store.search_trial_runs("shared")
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:
        _assert_complete_run(run.info.run_id)
    # the artifacts went through the server into its own folder, not into the project
    assert len(list((on_server.folder / server.ARTIFACTS).rglob("notebook/*.ipynb"))) == 4
    assert not (project / "mlartifacts").exists() and not (project / "mlflow.db").exists()

    board = run_imagebench("leaderboard", "--experiment", "shared", cwd=project)
    assert board.returncode == 0, board.stdout[-3000:] + board.stderr[-3000:]
    assert len((project / "results" / "shared" / "trials.csv").read_text().strip().splitlines()) == 1 + 4

    # the database password: in no param, tag, command line, log, notebook or file but its own
    password = on_server.password
    for run in store.search_trial_runs("shared") + [store.client().get_run(store.find_sweep_run("shared"))]:
        assert password not in json.dumps([run.data.params, run.data.tags])
    assert not _files_holding(password, project, on_server.folder)
    assert not [path for path in _repo_files() if password.encode() in path.read_bytes()]
    for process in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(process.info["cmdline"] or [])
    assert (on_server.folder / server.PGPASS).stat().st_mode & 0o777 == 0o600


PATIENCE = 8.0  # seconds; short, and long beside the few seconds the sweep takes to record a job


def _test_clock_waits(log_dir: Path, sweep: subprocess.Popen, down: float) -> tuple[float, float]:
    """Seconds the trial and then the sweep spent on the store after it went down (wall clock, at
    ``down``): from then until the trial's journal appears, and from the job's end (its status file)
    until the sweep has journaled its notebook. Training and the notebook's last cells are not counted."""
    journal_seen = None
    while sweep.poll() is None or journal_seen is None:
        journals = list(log_dir.glob("001-*.record/journal.jsonl"))
        if journals and journal_seen is None:
            journal_seen = time.time()
        if journals and '"notebook"' in journals[0].read_text():
            status = next(log_dir.glob("001-*.status"))
            return journal_seen - down, time.time() - status.stat().st_mtime
        assert time.time() - down < 20 * PATIENCE, "the trial was never journaled"
        time.sleep(0.05)
    raise AssertionError(f"the sweep ended (exit {sweep.returncode}) without journaling the trial's notebook")


def test_a_server_stopped_mid_sweep_stops_it_and_relog_completes_the_run(on_server, project, monkeypatch, tmp_path):
    # the kernel has its store client (MLflow imported: seconds) before the server goes down, as a warm kernel has
    inject_cell(project, "import pathlib, time\nfrom imagebench import store\nstore.client()\n"
                          "print('waiting for the server to go down', flush=True)\n"
                          "while not pathlib.Path('SERVER-DOWN').exists():\n    time.sleep(0.1)\n")
    sweep_file = write_sweep_file(project, "outage", "{learning_rate: [0.001, 0.002]}")
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, str(PATIENCE))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes
    log_dir = project / "results" / "outage" / "runs"
    with (tmp_path / "sweep.out").open("w+") as out:
        sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file)], cwd=project, stdout=out,
                                 stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: any("waiting for the server" in p.read_text() for p in log_dir.glob("001-*.log")))
            assert on_server.stop() == ["mlflow server", "PostgreSQL"]  # the whole server goes down while trial 1 trains
            down = time.time()
            (project / "SERVER-DOWN").touch()
            in_trial, in_sweep = _test_clock_waits(log_dir, sweep, down)
            sweep.wait(timeout=300)
        finally:
            if sweep.poll() is None:
                sweep.kill()
        out.seek(0)
        output = out.read()
    on_server.timings["outage: trial's wait"], on_server.timings["outage: sweep's wait"] = in_trial, in_sweep
    # the trial waits out the store once (the patience); what it and the sweep write after that goes
    # to the journal at once, rather than each waiting another patience
    assert PATIENCE - 1 < in_trial < 1.25 * PATIENCE and in_trial + in_sweep < 1.5 * PATIENCE, (in_trial, in_sweep)
    assert sweep.returncode == 3, output[-3000:]
    assert "stopped because MLflow store" in output and f"imagebench relog {log_dir}" in output
    journals = list(log_dir.glob("*.record/journal.jsonl"))
    assert len(journals) == 1 and str(journals[0].parent) in output  # the journal is named

    on_server.start("restart after the outage")  # the data survived: the run created before the outage is there
    runs = store.search_trial_runs("outage")
    assert [run.info.status for run in runs] == ["RUNNING"]  # trained, recorded in the journal; trial 2 never started
    run_id = runs[0].info.run_id
    assert not store.client().get_metric_history(run_id, "val/accuracy")

    relogged = run_imagebench("relog", "results/", cwd=project)
    assert relogged.returncode == 0, relogged.stdout[-3000:] + relogged.stderr[-3000:]
    _assert_complete_run(run_id)
    run = store.client().get_run(run_id)
    assert store.TAG_ERROR not in run.data.tags and "entries from" in run.data.tags[store.TAG_RELOGGED]
    assert on_server.password not in json.dumps([run.data.params, run.data.tags])


def test_a_restart_keeps_runs_params_metrics_and_artifacts(on_server, project, tmp_path):
    client = store.client()
    run = client.create_run(store.experiment_id("restart"), run_name="before-restart")
    run_id = run.info.run_id
    client.log_param(run_id, "learning_rate", "0.007")
    for step in (1, 2, 3):
        client.log_metric(run_id, "val/accuracy", step / 10, step=step)
    note = tmp_path / "note.txt"
    note.write_text("kept across restarts\n")
    client.log_artifact(run_id, str(note))
    client.set_terminated(run_id, "FINISHED")

    assert on_server.stop("stop") == ["mlflow server", "PostgreSQL"]
    assert not server.status(on_server.folder).running
    assert server.stop(on_server.folder) == []  # stopping what is not running is no error
    on_server.start("restart (same folder)")
    assert server.status(on_server.folder).running

    after = store.client().get_run(run_id)
    assert after.info.status == "FINISHED" and after.data.params == {"learning_rate": "0.007"}
    assert [(m.step, m.value) for m in store.client().get_metric_history(run_id, "val/accuracy")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert Path(store.client().download_artifacts(run_id, "note.txt", str(tmp_path / "back"))).read_text() == "kept across restarts\n"


def test_start_is_idempotent_and_names_what_blocks_it(on_server, monkeypatch):
    again = server.start(on_server.folder, port=on_server.port, db_port=on_server.db_port)  # already running: reused
    assert again.uri == on_server.uri and again.pid == server.status(on_server.folder).mlflow_pid

    other = Path(tempfile.mkdtemp(prefix="ib-other-"))
    try:
        with pytest.raises(server.ServerError, match=rf"port {on_server.port} on 127.0.0.1 is taken.*--port"):
            server.start(other, port=on_server.port, db_port=free_ports(1)[0])
        with pytest.raises(server.ServerError, match=rf"port {on_server.db_port} on 127.0.0.1 is taken.*--db-port"):
            server.start(other, port=free_ports(1)[0], db_port=on_server.db_port)
        assert server.database_port(other) is None  # a failed start leaves nothing running

        with monkeypatch.context() as patch:
            patch.setattr(postgres.shutil, "which", lambda name: None)
            patch.setattr(postgres.glob, "glob", lambda pattern: [])
            with pytest.raises(server.ServerError, match="apt-get install postgresql"):
                server.start(other)
        real_find_spec = service.importlib.util.find_spec
        with monkeypatch.context() as patch:
            patch.setattr(service.importlib.util, "find_spec", lambda name, *a: None if name == "psycopg2" else real_find_spec(name, *a))
            with pytest.raises(server.ServerError, match=r"pip install -e '\.\[server\]'"):
                server.start(other)
        assert not (other / server.PGDATA).exists()  # those checks come before anything is created
    finally:
        server.stop(other)
        shutil.rmtree(other, ignore_errors=True)
    assert server.main(["status", "--folder", str(on_server.folder)]) == server.EXIT_OK


def test_basic_auth_asks_every_client_for_a_password(on_server):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    assert server.exposure_warning("0.0.0.0", None) and "--app-name basic-auth" in server.exposure_warning("0.0.0.0", None)
    assert server.exposure_warning("127.0.0.1", None) is None
    assert server.stop_mlflow(on_server.folder)
    try:
        server.start_mlflow(on_server.folder, "127.0.0.1", on_server.port, on_server.db_port, app_name="basic-auth")
        search = f"{on_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(search, timeout=10)
        ini = (on_server.folder / server.AUTH_INI).read_text()
        admin_password = next(line.split("=", 1)[1].strip() for line in ini.splitlines() if line.startswith("admin_password"))
        request = urllib.request.Request(search)
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode())
        assert urllib.request.urlopen(request, timeout=10).status == 200
        for name in (server.AUTH_INI, server.AUTH_DB, server.FLASK_SECRET):
            assert (on_server.folder / name).stat().st_mode & 0o777 == 0o600, name
        assert not _files_holding(admin_password, on_server.folder / server.ARTIFACTS) and \
            admin_password not in (on_server.folder / server.MLFLOW_LOG).read_text()
    finally:
        server.stop_mlflow(on_server.folder)  # the next test (or the fixture) gets the plain server again
