"""A sweep as a Ray job (docs/guides/cluster.md "As a Ray job"): `ray start` with the job server on
127.0.0.1, `make server`, `ray job submit` with the project as the job's working directory, the
leaderboard rebuilt here from the tracking server. In a module of its own: a head's job agent
listens on a fixed port, which another test module's cluster on this machine would hold."""

import shutil

import pytest
from helpers import REPO, free_port, quickstart_project, run_in_own_pid_namespace, trial_runs, user_shell_environment
from readme_blocks import block

from imagebench import server, store


@pytest.mark.slow
def test_a_sweep_submitted_as_a_ray_job_records_into_the_server_and_its_leaderboard_comes_back(monkeypatch):
    """docs/guides/cluster.md "As a Ray job": the driver on the head, the project as the job's working dir."""
    ray_port, dashboard_port, server_port, db_port = free_port(), free_port(), free_port(), free_port()
    commands = block("ray-job").commands(**{"6379": str(ray_port), "8265": str(dashboard_port), "127.0.0.1:5000": f"127.0.0.1:{server_port}"})
    root = quickstart_project()
    shutil.copy2(REPO / ".gitignore", root / ".gitignore")  # what the job's working dir leaves out (the venv above all)
    environment = user_shell_environment(IMAGEBENCH_SERVER_PORT=str(server_port), IMAGEBENCH_SERVER_DB_PORT=str(db_port))
    returncode, output, watch = run_in_own_pid_namespace(commands, root, environment)
    try:
        assert returncode == 0, output[-6000:]
        assert "Running entrypoint for job raysubmit_" in output and "Job 'raysubmit_" in output and "' succeeded" in output
        assert "1 finished, 0 failed of 1 trials run" in output and "runtime_resources/working_dir_files" in output  # ran on the head
        assert not watch.off_loopback, watch.off_loopback
        assert (root / "results" / "ray-job" / "leaderboard.csv").is_file()  # rebuilt here from the tracking server
        assert not (root / "results" / "ray-job" / "runs").exists()  # the job's own results/ stayed on the head
        running = server.start(root / ".server", port=server_port, db_port=db_port)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", running.uri)
        runs = trial_runs("ray-job")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and store.TAG_ERROR not in runs[0].data.tags
        assert store.client().list_artifacts(runs[0].info.run_id, store.ARTIFACT_NOTEBOOK_DIR)  # the notebook is in the record
    finally:
        server.stop(root / ".server")
        shutil.rmtree(root.parent, ignore_errors=True)
