"""The same sweep on a real Ray cluster: two Ray nodes on this machine (Ray's own multi-node
``cluster_utils.Cluster``: a real GCS, real raylets and worker processes), all on 127.0.0.1.

Both frameworks to the end with checkpoints travelling between nodes; a node removed mid-trial;
the driver killed with SIGKILL; a dataset missing on the node; bad executor options and a cluster
that does not answer or lacks the GPUs asked for, refused before any MLflow run exists. The cluster
guide's one-machine quick start run as written (`ray start`, `make server`, the sweep, `ray stop`). Fast:
a node's clean-up after a job, and which Ray errors mean a lost node."""

import json
import os
import shutil
import signal
import subprocess
import time

# Ray binds the machine's interface address unless told otherwise: with this, every node, the
# driver and the workers stay on loopback (it must be set before ray is imported anywhere)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import psutil  # noqa: E402
import pytest  # noqa: E402

from helpers import flower_folder, quickstart_project, run_in_own_pid_namespace, run_shell, tiny_values, user_shell_environment  # noqa: E402
from imagebench.report import leaderboard
from imagebench import server
from imagebench import store  # noqa: E402
from readme_blocks import block  # noqa: E402
from helpers import BIN, REPO, free_port, inject_cell, run_sweep, trial_runs, wait_for, write_sweep_file  # noqa: E402

slow = pytest.mark.slow  # every test here but the fast ones at the end
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000}


def _add_node(cluster):
    return cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")


@pytest.fixture(scope="module")
def cluster():
    """A head that runs no trial (0 CPUs: losing a node never means losing the cluster) and two
    worker nodes of 1 CPU; every Ray process stopped at the end."""
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1", "_system_config": FAST_NODE_DEATH})
    _add_node(ray_cluster)
    _add_node(ray_cluster)
    yield ray_cluster
    ray_cluster.shutdown()


def _listening_off_loopback() -> list:
    """Ray's sockets bound to anything but loopback (there must be none)."""
    found = []
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1"):
            try:
                name = psutil.Process(connection.pid).name() if connection.pid else ""
            except psutil.NoSuchProcess:
                continue
            if any(part in name for part in ("gcs_server", "raylet", "ray::", "ray_")):
                found.append((name, connection.laddr))
    return found


def _ray_sweep(project, cluster, sweep_file, *args, timeout=600, models=False):
    return run_sweep(project, sweep_file, "--executor", "ray", "--address", cluster.address, *args, timeout=timeout, models=models)


@slow
def test_both_frameworks_run_to_the_end_on_two_nodes_with_checkpoints_between_rungs(project, cluster, on_server):
    """The documented set-up: a Ray cluster writing to the shared tracking server on PostgreSQL."""
    sweep_file = project / "params" / "raysmall.yaml"
    sweep_file.write_text("experiment: raysmall\nbase: {dataset: digits, image_size: 32, batch_size: 64, max_per_class: 12, "
                          "val_fraction: 0.25, test_fraction: 0.25, epochs: 2, early_stopping_patience: 0}\n"
                          "matrix: {framework: [keras, torch], model: [cnn]}\n")
    # halving with eta 2: each trial trains 1 epoch, then continues to 2 from its checkpoint (on any node)
    done = _ray_sweep(project, cluster, sweep_file, "--strategy", "halving", "--eta", "2", models=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 node(s)" in done.stdout and "2 trial(s) at once" in done.stdout
    assert "only nodes on this machine reach" not in done.stdout  # the nodes write over HTTP
    runs = trial_runs("raysmall")
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    client = store.client()
    runs_dir = project / "results" / "raysmall" / "runs"
    for run in runs:
        run_id, trial = run.info.run_id, run.data.tags[store.TAG_TRIAL]
        assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]  # epoch 2 continued epoch 1
        assert run.data.metrics["epochs_run"] == 2 and run.data.tags[store.TAG_EPOCH_BUDGET] == "2"
        notebooks = {item.path for item in client.list_artifacts(run_id, store.ARTIFACT_NOTEBOOK_DIR)}
        assert notebooks == {f"notebook/{trial}.rung1.ipynb", f"notebook/{trial}.rung2.ipynb"}
        assert (runs_dir / f"{trial}.rung2.ipynb").is_file() and (runs_dir / f"{trial}.rung2.log").is_file()
        assert "127.0.0.1, node " in run.data.tags[store.TAG_NODE]
        notebook = (runs_dir / f"{trial}.rung2.ipynb").read_text()
        for chatter in ("oneDNN", "absl::InitializeLog", "IProgress not found", "Downloading artifacts"):
            assert chatter not in notebook, (trial, chatter)  # start-up noise kept out of the trial's outputs
    assert len({run.data.tags[store.TAG_NODE] for run in runs}) == 2  # both nodes trained
    assert not list((project / "results" / "raysmall" / "checkpoints").glob("*.pkl"))  # dropped after the last rung
    board = leaderboard.build("raysmall", with_figures=False)
    assert len(board.leaders) == 2
    by_run = {run.info.run_id: run for run in runs}
    for _, row in board.leaders.iterrows():
        assert row["test_accuracy"] == pytest.approx(by_run[row["run_id"]].data.metrics["test/accuracy"])
        # the weights came back from the node with the record; the model is registered on the server
        versions = client.search_model_versions(f"name = '{store.registered_model_name('raysmall', row['model'], row['framework'])}'")
        assert [version.run_id for version in versions] == [row["run_id"]]
    assert "alias 'champion'" in done.stdout and "deleted the kept weights of 0 trial(s)" in done.stdout
    assert not _listening_off_loopback()


def _pid_file_cell(folder, rate: float, seconds: int) -> str:
    return (f"import os, time\nif params.learning_rate == {rate}:\n"
            f"    open({str(folder / 'slow.pid')!r}, 'w').write(str(os.getpid()))\n    time.sleep({seconds})\n")


def _raylet_pid(node) -> int:
    import ray._private.ray_constants as constants

    return node.all_processes[constants.PROCESS_TYPE_RAYLET][0].process.pid


def _node_running(cluster, pid: int):
    """The cluster node whose raylet is an ancestor of ``pid`` (the kernel of a trial)."""
    ancestors = {parent.pid for parent in psutil.Process(pid).parents()}
    return next(node for node in cluster.worker_nodes if _raylet_pid(node) in ancestors)


@slow
def test_a_node_lost_mid_trial_fails_that_trial_naming_it_and_the_rerun_finishes_only_that(project, cluster, tmp_path):
    inject_cell(project, _pid_file_cell(tmp_path, 0.002, 120))
    sweep_file = write_sweep_file(project, "lostnode", "{learning_rate: [0.001, 0.002, 0.003]}", epochs=1)
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--executor", "ray", "--address",
                              cluster.address, "--no-leaderboard"], cwd=project, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    pid_file = tmp_path / "slow.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=180)
    kernel = int(pid_file.read_text())
    node = _node_running(cluster, kernel)
    node_id = node.node_id[:8]
    cluster.remove_node(node, allow_graceful=False)  # its raylet and workers killed: the node is gone
    try:
        output, _ = sweep.communicate(timeout=300)
        wait_for(lambda: _gone(kernel), timeout=30)  # the trial's kernel went with its node
    finally:
        _add_node(cluster)
    assert sweep.returncode == 1, output[-3000:]
    assert "2 finished, 1 failed of 3 trials run" in output
    lost = [run for run in trial_runs("lostnode") if run.info.status == "FAILED"]
    assert len(lost) == 1 and lost[0].data.tags[store.TAG_TRIAL].startswith("002-")  # the lr 0.002 trial
    assert f"node {node_id}) lost" in lost[0].data.tags[store.TAG_ERROR]

    shutil.copy(REPO / "notebooks" / "train.ipynb", project / "notebooks" / "train.ipynb")
    done = _ray_sweep(project, cluster, sweep_file, "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 finished, 0 failed of 1 trials run, 2 already finished (skipped)" in done.stdout
    runs = trial_runs("lostnode")
    finished = [run.data.tags[store.TAG_FINGERPRINT] for run in runs if run.info.status == "FINISHED"]
    assert len(finished) == 3 and len(set(finished)) == 3  # no fingerprint finished twice
    assert "RUNNING" not in {run.info.status for run in runs}


@slow
def test_the_driver_killed_leaves_nothing_training_and_the_rerun_resumes(project, cluster, tmp_path):
    inject_cell(project, _pid_file_cell(tmp_path, 0.002, 120))
    sweep_file = write_sweep_file(project, "driverkill", "{learning_rate: [0.001, 0.002]}", epochs=1)
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--executor", "ray", "--address",
                              cluster.address, "--workers", "1", "--no-leaderboard"], cwd=project,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    pid_file = tmp_path / "slow.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=180)
    kernel = int(pid_file.read_text())
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    # Ray ends the dead driver's actors; each actor's worker takes its kernel down: no orphan keeps training
    wait_for(lambda: _gone(kernel), timeout=60)
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                           if "imagebench.executors.worker" in " ".join(p.info["cmdline"] or [])], timeout=60)  # fmt: skip
    assert sorted(run.info.status for run in trial_runs("driverkill")) == ["FINISHED", "RUNNING"]

    shutil.copy(REPO / "notebooks" / "train.ipynb", project / "notebooks" / "train.ipynb")
    done = _ray_sweep(project, cluster, sweep_file, "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 finished, 0 failed of 1 trials run, 1 already finished (skipped)" in done.stdout and "marked KILLED" in done.stdout
    assert sorted(run.info.status for run in trial_runs("driverkill")) == ["FINISHED", "FINISHED", "KILLED"]


@slow
def test_a_hanging_trial_times_out_and_a_dataset_missing_on_the_node_fails_naming_node_and_path(project, cluster, tmp_path):
    flowers = flower_folder(tmp_path / "flowers")
    inject_cell(project, _pid_file_cell(tmp_path, 0.001, 600))  # trial 1 hangs
    sweep_file = write_sweep_file(project, "nodata", "{learning_rate: [0.001]}", epochs=1)
    sweep_file.write_text(sweep_file.read_text().replace("matrix: {", f"matrix: {{dataset: [digits, {flowers}], "))
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--executor", "ray", "--address",
                              cluster.address, "--workers", "1", "--trial-timeout", "30", "--no-leaderboard"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wait_for(lambda: (tmp_path / "slow.pid").exists(), timeout=180)  # trial 1 (digits) runs; the data was checked
    flowers.rename(tmp_path / "elsewhere")  # the folder is not at that path where trial 2 will run
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, output[-3000:]
    assert "0 finished, 2 failed of 2 trials run" in output
    errors = {run.data.tags[store.TAG_TRIAL][:3]: run for run in trial_runs("nodata") if run.info.status == "FAILED"}
    timed_out, missing = errors["001"], errors["002"]
    assert "stopped after --trial-timeout 30s" in timed_out.data.tags[store.TAG_ERROR]
    assert store.client().list_artifacts(timed_out.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)  # its partial notebook came back
    wait_for(lambda: _gone(int((tmp_path / "slow.pid").read_text())), timeout=30)  # the hung kernel was stopped
    error = missing.data.tags[store.TAG_ERROR]
    assert f"dataset {flowers} does not exist on Ray node" in error and "same absolute path" in error


@slow
def test_ship_data_sends_the_dataset_to_nodes_that_never_read_its_folder(project, cluster, tmp_path):
    flowers = flower_folder(tmp_path / "flowers")
    inject_cell(project, f"import time, pathlib\nwhile not pathlib.Path({str(tmp_path / 'go')!r}).exists():\n    time.sleep(0.2)\n")
    sweep_file = write_sweep_file(project, "shipped", "{learning_rate: [0.001, 0.002]}", epochs=1)
    sweep_file.write_text(sweep_file.read_text().replace("dataset: digits", f"dataset: {flowers}"))
    log = tmp_path / "sweep.log"
    # docs/guides/cluster.md; no models published: this machine will not have the folder either when the sweep ends
    line = block("ship-data").commands(**{"params/flowers.yaml": str(sweep_file), "HEAD:6379": cluster.address,
                                          "--ship-data": "--ship-data --no-models"})[0]  # fmt: skip
    with log.open("w") as output:
        sweep = subprocess.Popen(line, shell=True, cwd=project, stdout=output, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})  # fmt: skip
        wait_for(lambda: "ray: shipping" in log.read_text(), timeout=180)  # packed on this machine, put in the object store
        flowers.rename(tmp_path / "elsewhere")  # from now on no node (nor this machine) has the folder
        (tmp_path / "go").touch()
        assert sweep.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"ray: shipping {flowers} at 32 px to the nodes (--ship-data): " in text and "2 finished, 0 failed" in text
    runs = trial_runs("shipped")
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    arrivals = [json.loads(run.data.tags[store.TAG_DATA_SHIPPED]) for run in runs]
    planned = {run.data.tags[store.TAG_DATASET_FINGERPRINT] for run in runs}
    assert {arrival["fingerprint"] for arrival in arrivals} == planned and any(arrival["first_on_node"] for arrival in arrivals)
    assert all(arrival["bytes"] > 0 and "127.0.0.1, node " in arrival["node"] for arrival in arrivals)
    assert all(run.data.metrics["test/accuracy"] >= 0 and run.data.params["dataset"] == str(flowers) for run in runs)


@slow
def test_nodes_lacking_a_folder_are_found_on_every_node(cluster, tmp_path):
    """What makes shipping automatic: each alive node asked whether the folder is there."""
    import ray

    from imagebench.executors.ray_cluster import connect, nodes_lacking

    connect(cluster.address)
    try:
        assert nodes_lacking(str(tmp_path)) == []
        missing = nodes_lacking(str(tmp_path / "nowhere"))
        assert len(missing) == 3 and all("127.0.0.1, node " in name for name in missing)
    finally:
        ray.shutdown()


def _gone(pid: int) -> bool:
    """Killed: no such process, or a zombie (its exit not yet collected by whichever process Linux
    handed the orphan to; a killed kernel whose worker was killed with it can linger so briefly)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("args, message", [
    (["--executor", "spark"], "--executor 'spark' is unknown: use one of local"),
    (["--gpus-per-trial", "1"], "--gpus-per-trial 1 needs --executor ray"),
    (["--executor", "ray", "--cpus-per-trial", "-1"], "--cpus-per-trial -1 is invalid: it must be more than 0"),
    (["--executor", "ray", "--gpus-per-trial", "a quarter"], "argument --gpus-per-trial: 'a quarter' is not a number"),
    (["--executor", "ray", "--gpus-per-trial", "1.5"], "--gpus-per-trial 1.5 is invalid: above 1 it must be a whole number"),
])
@slow
def test_bad_executor_options_are_named_before_anything_runs(project, args, message):
    sweep_file = write_sweep_file(project, "badexec", "{learning_rate: [0.001]}", epochs=1)
    done = run_sweep(project, sweep_file, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not (project / "mlflow.db").exists() or not trial_runs("badexec")


@slow
def test_a_cluster_that_does_not_answer_or_lacks_gpus_stops_before_any_run(project, cluster):
    sweep_file = write_sweep_file(project, "nocluster", "{learning_rate: [0.001]}", epochs=1)
    started = time.monotonic()
    done = run_sweep(project, sweep_file, "--executor", "ray", "--address", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2 and "does not answer" in done.stderr and "ray start --head" in done.stderr, done.stderr
    assert time.monotonic() - started < 60
    done = _ray_sweep(project, cluster, sweep_file, "--gpus-per-trial", "1")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "has 1 CPU(s) and 1 GPU(s) for one trial" in done.stderr and "0 GPU" in done.stderr
    experiments = store.client().search_experiments()
    assert "nocluster" not in {experiment.name for experiment in experiments}  # nothing was created in MLflow


@slow
def test_imagebench_cache_looks_at_and_clears_every_node(project, cluster):
    here, every_node, clear = block("node-cache").commands(**{"HEAD:6379": cluster.address})  # docs/guides/cluster.md
    local = run_shell(here, project)
    assert local.returncode == 0 and "(this machine):" in local.stdout, local.stderr
    shown = run_shell(every_node, project)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.count("(127.0.0.1, node ") == 3  # the head and both nodes answered, each for itself
    assert shown.stdout.count("Ray actors' scratch folders: ") == 3 and "total kept: " in shown.stdout
    cleared = run_shell(clear, project)
    assert cleared.returncode == 0 and cleared.stdout.count("total removed: ") == 3, cleared.stderr[-2000:]


# --- the cluster guide's one-machine quick start (docs/guides/cluster.md), as a user types it
@slow
def test_the_readme_cluster_quickstart_runs_as_written_and_stays_on_loopback(monkeypatch):
    ray_port, server_port, db_port = free_port(), free_port(), free_port()
    commands = block("cluster-quickstart").commands(**{"6379": str(ray_port), "127.0.0.1:5000": f"127.0.0.1:{server_port}"})
    root = quickstart_project()
    # `make server` has no options: the ports go by environment
    environment = user_shell_environment(IMAGEBENCH_SERVER_PORT=str(server_port), IMAGEBENCH_SERVER_DB_PORT=str(db_port))
    returncode, output, watch = run_in_own_pid_namespace(commands, root, environment)
    try:
        assert returncode == 0, output[-6000:]
        assert "2 finished, 0 failed of 2 trials run" in output and "alias 'champion'" in output, output[-6000:]
        assert not watch.off_loopback, watch.off_loopback
        assert {"gcs_server", "raylet", "imagebench"} <= watch.seen and any("TrialActor" in name for name in watch.seen), watch.seen
        runs_dir = root / "results" / "ray-quickstart" / "runs"
        assert len(list(runs_dir.glob("*.ipynb"))) == 2, sorted(runs_dir.iterdir())
        assert {folder.name for folder in (root / "results" / "ray-quickstart" / "models").iterdir()} >= {"torch-cnn", "torch-cnn_attention"}
        # the data outlives the server: started again (as `make server` would) to read the record
        running = server.start(root / ".server", port=server_port, db_port=db_port)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", running.uri)
        client = store.client()
        runs = trial_runs("ray-quickstart")
        assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
        for run in runs:
            trial = run.data.tags[store.TAG_TRIAL]
            assert store.TAG_ERROR not in run.data.tags, run.data.tags[store.TAG_ERROR]
            assert (runs_dir / f"{trial}.ipynb").is_file() and (runs_dir / f"{trial}.record").is_dir()
            notebooks = [item.path for item in client.list_artifacts(run.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)]
            assert notebooks == [f"{store.ARTIFACT_NOTEBOOK_DIR}/{trial}.ipynb"]
            name = store.registered_model_name("ray-quickstart", run.data.params["model"], "torch")
            assert [version.run_id for version in client.search_model_versions(f"name = '{name}'")] == [run.info.run_id]
    finally:
        server.stop(root / ".server")
        shutil.rmtree(root.parent, ignore_errors=True)


# --- fast: no cluster
def test_the_clean_up_after_a_job_removes_exactly_its_files_and_its_record_folder(tmp_path):
    from imagebench.executors import Job
    from imagebench.executors.ray_cluster import job_files, remove_job_files
    from imagebench.sweep.grid import make_trial
    from imagebench.core.params import make_params

    def job_of(index: int) -> Job:
        trial = make_trial(index, make_params(tiny_values(framework="torch", model="cnn", seed=index)), "data", {})
        return Job(trial, lambda: "run", tmp_path / f"{trial.name}.ipynb", checkpoint=tmp_path / f"{trial.name}.pkl")

    done, other = job_of(1), job_of(2)
    for job in (done, other):
        for path in job_files(job):
            path.write_text("x")
        (job.record_dir / "model").mkdir(parents=True)  # a whole trial's label matches <label>.record
        (job.record_dir / "model" / "weights.pt").write_text("x")
    (tmp_path / "worker-1-123.log").write_text("the actor's worker: kept for its next job")
    before_other = sorted(tmp_path.rglob(f"{other.trial.name}*"))
    remove_job_files(done)
    assert not list(tmp_path.rglob(f"{done.trial.name}*"))
    assert sorted(tmp_path.rglob(f"{other.trial.name}*")) == before_other and (tmp_path / "worker-1-123.log").is_file()


def test_only_a_node_the_cluster_counts_dead_is_reported_lost():
    import ray

    from imagebench.executors.ray_cluster import failure_reason

    node = "vm (127.0.0.1, node 3732df0f)"
    raised = ray.exceptions.RayTaskError("TrialActor.run", "Traceback ...", IsADirectoryError(21, "Is a directory", "001-x.record"),
                                         proctitle="ray::TrialActor.run", pid=1, ip="127.0.0.1").as_instanceof_cause()
    asked = []
    reason = failure_reason(raised, node, lambda: asked.append(True) or True)
    assert "lost" not in reason and not asked  # an exception of our code: the actor and its node are alive
    assert reason.startswith(f"IsADirectoryError on Ray node {node}: ") and "001-x.record" in reason
    died = ray.exceptions.ActorDiedError()
    assert "lost" not in failure_reason(died, node, lambda: True)  # e.g. killed for memory on a live node
    assert failure_reason(died, node, lambda: True).startswith(f"the Ray actor running this trial on node {node} died (ActorDiedError")
    assert f"Ray node {node} lost while running this trial (ActorDiedError)" in failure_reason(died, node, lambda: False)


def test_a_new_actor_removes_the_scratch_folders_of_dead_actors_only(tmp_path):
    """A killed actor never runs its shutdown: the next actor on the node removes its folder, never a live one's."""
    import os
    import signal
    import sys
    import time

    from imagebench.executors.node_storage import SCRATCH_OWNER, SCRATCH_PREFIX, remove_abandoned_scratch

    holder = ("import sys, time\nfrom pathlib import Path\nfrom imagebench.executors.node_storage import hold_scratch\n"
              "owner = hold_scratch(Path(sys.argv[1]))\nprint('held', flush=True)\ntime.sleep(600)\n")
    folders = {name: tmp_path / f"{SCRATCH_PREFIX}{name}" for name in ("live", "killed", "old-unowned", "new-unowned")}
    for folder in folders.values():
        (folder / "runs").mkdir(parents=True)
    actors = {name: subprocess.Popen([sys.executable, "-c", holder, str(folders[name])], stdout=subprocess.PIPE, text=True)
              for name in ("live", "killed")}
    try:
        for actor in actors.values():
            assert actor.stdout.readline().strip() == "held"
        os.kill(actors["killed"].pid, signal.SIGKILL)
        actors["killed"].wait()
        old = time.time() - 3600
        os.utime(folders["old-unowned"], (old, old))
        assert (folders["killed"] / SCRATCH_OWNER).exists()

        removed = remove_abandoned_scratch(tmp_path)
        assert sorted(path.name for path in removed) == sorted(folders[name].name for name in ("killed", "old-unowned"))
        assert folders["live"].is_dir() and folders["new-unowned"].is_dir()
    finally:
        for actor in actors.values():
            actor.kill()
