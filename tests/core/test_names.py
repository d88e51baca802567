"""Names that become paths (issue 20): a typed or MLflow-made name never puts a file outside results/."""

import pytest
from helpers import run_imagebench

from imagebench.core.names import MAX_NAME_LENGTH, UnsafeName, safe_name

ESCAPING = "../../escaped"  # from <project>/results/ this is <tmp>/escaped, beside the project


@pytest.mark.parametrize("name", ["demo", "grid52", "e2e", "flowers_2026-12.v2", "A" * MAX_NAME_LENGTH])
def test_plain_names_are_used_as_they_are(name):
    assert safe_name(name, "experiment") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/tmp/x", "a\\b", ".hidden", "-flag", "my sweep",
                                  "a\nb", "장미", "A" * (MAX_NAME_LENGTH + 1), None, 2024])  # fmt: skip
def test_names_that_could_leave_their_folder_are_refused_with_the_rule(name):
    with pytest.raises(UnsafeName, match=r"experiment .* cannot be used as a folder or file name; use letters A-Z a-z, digits"):
        safe_name(name, "experiment")


def _nothing_written_beside(project):
    beside = sorted(path.name for path in project.parent.iterdir())
    assert not [name for name in beside if name.startswith("escaped")], beside
    assert not (project / "results").exists()


def test_an_escaping_experiment_in_a_sweep_file_stops_the_sweep_before_anything_is_written(project):
    sweep_file = project / "params" / "hostile.yaml"
    sweep_file.write_text((project / "params" / "smoke.yaml").read_text().replace("experiment: smoke", f"experiment: {ESCAPING}"))
    done = run_imagebench("sweep", sweep_file, "--frameworks", "torch", "--no-models", cwd=project)  # not a dry run
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{sweep_file}: experiment '{ESCAPING}' cannot be used as a folder or file name; use letters" in done.stderr
    _nothing_written_beside(project)
    assert not (project / "mlflow.db").exists()  # refused while planning: no experiment, no run


def test_an_escaping_experiment_option_stops_the_sweep_before_anything_is_written(project):
    done = run_imagebench("sweep", "params/smoke.yaml", "--experiment", ESCAPING, "--frameworks", "torch", "--no-models",
                          cwd=project)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"--experiment '{ESCAPING}' cannot be used as a folder or file name" in done.stderr
    _nothing_written_beside(project)


def _finished_trial_run(experiment: str, run_name: str = "r1", model: str = "cnn") -> str:
    """What anyone with access to a shared store can make: an experiment and a finished trial run
    with names of their choosing (the leaderboard then has one leader)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {"imagebench.role": "trial", "imagebench.model": model, "imagebench.framework": "torch"}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    client.log_metric(run_id, "best/val_accuracy", 0.9)
    client.log_metric(run_id, "best/val_loss", 0.3)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _refused(done, message: str) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "leader(s) of" not in done.stdout  # refused before any leader was exported or registered


def test_an_escaping_experiment_of_one_trial_is_refused_before_a_run_exists(project):
    done = run_imagebench("trial", "--set", "experiment=../../escaped", "--set", "epochs=1", cwd=project)
    assert done.returncode == 2 and "'experiment'" in done.stderr and "cannot be used as a folder name" in done.stderr
    assert not (project.parent / "escaped").exists() and not (project / "mlflow.db").exists()


def test_names_made_in_mlflow_that_would_leave_results_are_refused_by_leaderboard_and_export(project):
    # one store for every case: creating an MLflow store costs seconds
    _finished_trial_run(ESCAPING)
    named = _finished_trial_run("named", run_name="../../../../escaped")  # its record: <tmp>/escaped.record
    tagged = _finished_trial_run("tagged", model="../../../../escaped")
    for command in ("leaderboard", "export"):
        _refused(run_imagebench(command, "--experiment", ESCAPING, cwd=project),
                 f"experiment '{ESCAPING}' cannot be used as a folder or file name; use letters")
    _refused(run_imagebench("export", "--experiment", "named", cwd=project),
             f"MLflow run {named}: name '../../../../escaped' cannot be used as a folder or file name")
    _refused(run_imagebench("export", "--experiment", "tagged", cwd=project),
             f"MLflow run {tagged}: tag imagebench.model '../../../../escaped' cannot be used as a folder or file name")
    _nothing_written_beside(project)
