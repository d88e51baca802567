"""Load and soak figures for the shared tracking server (issue 23 item 4): N tiny trials with four
workers against the PostgreSQL-backed server, then against the embedded SQLite store, counted run by
run; then two sweeps of different experiments at once into the server, and the same sweep file
started twice at once (on one machine, and from two project folders sharing the server as two
machines do): the second must refuse and no fingerprint may be trained twice.

Every sweep is `imagebench sweep FILE --workers W --no-models` in its own process, as the user types
it. The server is the project's own (``imagebench.server.start``: PostgreSQL + `mlflow server`) on
free loopback ports in a throw-away folder, stopped at the end. While the load sweep runs, a sampler
reads every 0.5 s the TCP connections established to the server's port, PostgreSQL's connections to
the MLflow database (pg_stat_activity) and the RSS of the server's process tree. A trial's store
write time is its ``cost/store_seconds``: the wall time of every write its recorder makes.

    python benchmarks/server_load.py [--trials 200] [--workers 4] [--pair-trials 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, write_record  # noqa: E402

BIN = Path(sys.executable).parent
TINY = ("dataset: digits, image_size: 32, batch_size: 64, max_per_class: 12, val_fraction: 0.25, test_fraction: 0.25, "
        "epochs: 1, framework: torch, model: cnn")  # fmt: skip
SAMPLE_SECONDS = 0.5


def free_port(taken: tuple[int, ...] = ()) -> int:
    """A port free on 127.0.0.1 now, other than ``taken``."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port if port not in taken else free_port(taken)


# --- projects and sweeps
def new_project(folder: Path) -> Path:
    for name in ("notebooks", "params"):
        shutil.copytree(REPO / name, folder / name)
    return folder


def sweep_file(project: Path, experiment: str, trials: int) -> Path:
    """``trials`` tiny trials, one per learning rate (each its own fingerprint)."""
    rates = ", ".join(f"{0.0001 * (index + 1):.4f}" for index in range(trials))
    path = project / "params" / f"{experiment}.yaml"
    path.write_text(f"experiment: {experiment}\nbase: {{{TINY}}}\nmatrix: {{learning_rate: [{rates}]}}\n")
    return path


def start_sweep(project: Path, path: Path, uri: str, workers: int) -> subprocess.Popen:
    environment = {**os.environ, "IMAGEBENCH_ROOT": str(project), "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([str(BIN / "imagebench"), "sweep", str(path), "--workers", str(workers), "--no-models", "--quiet"],
                            cwd=project, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(sweep: subprocess.Popen) -> tuple[int, str, str]:
    out, err = sweep.communicate()
    return sweep.returncode, out, err


# --- what the server holds
class Sampler(threading.Thread):
    """Connections to the server and to PostgreSQL, and the server's RSS, every SAMPLE_SECONDS."""

    def __init__(self, server_folder: Path, port: int, db_port: int, server_pid: int):
        super().__init__(daemon=True)
        self.folder, self.port, self.db_port, self.server_pid = server_folder, port, db_port, server_pid
        self.server_connections, self.db_connections, self.rss_mb = [], [], []
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg2

        from imagebench.server import DB_HOST, DB_NAME, DB_USER, PGPASS

        database = psycopg2.connect(host=DB_HOST, port=self.db_port, dbname=DB_NAME, user=DB_USER, passfile=str(self.folder / PGPASS))
        database.autocommit = True
        try:
            while not self.stopping.wait(SAMPLE_SECONDS):
                self.sample(database)
        finally:
            database.close()

    def sample(self, database) -> None:
        import psutil

        established = [c for c in psutil.net_connections("tcp")
                       if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == self.port]  # fmt: skip
        self.server_connections.append(len(established))
        with database.cursor() as cursor:  # (not counting this sampler's own connection)
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            self.db_connections.append(cursor.fetchone()[0])
        try:
            server = psutil.Process(self.server_pid)
            tree = [server, *server.children(recursive=True)]
            self.rss_mb.append(sum(process.memory_info().rss for process in tree) / 2**20)
        except psutil.Error:
            pass

    def figures(self) -> dict:
        return {"peak_server_connections": max(self.server_connections, default=0),
                "peak_postgres_connections": max(self.db_connections, default=0),
                "server_rss_mb_first": self.rss_mb[0] if self.rss_mb else None,
                "server_rss_mb_max": max(self.rss_mb, default=None), "server_rss_mb_last": self.rss_mb[-1] if self.rss_mb else None,
                "samples": len(self.rss_mb)}  # fmt: skip


# --- counting the record
def count_record(experiment: str, trials: int) -> dict:
    """How many runs the store holds as it should, run by run (every figure but ``trials`` should be
    0 or equal ``trials``)."""
    from imagebench import store
    from imagebench.core import metrics
    from imagebench.core.params import FIELD_NAMES

    client = store.client()
    runs = store.search_trial_runs(experiment)
    statuses = Counter(run.info.status for run in runs)
    finished = Counter(run.data.tags.get(store.TAG_FINGERPRINT) for run in runs if run.info.status == "FINISHED")
    wanted_artifacts = {store.ARTIFACT_CONFUSION_PNG, store.ARTIFACT_CONFUSION_JSON, store.ARTIFACT_CURVES_PNG, store.ARTIFACT_REPORT,
                        store.ARTIFACT_CLASS_MAP, store.ARTIFACT_PREDICTIONS, store.ARTIFACT_NOTEBOOK_DIR}  # fmt: skip
    missing_steps = missing_params = missing_artifacts = missing_final = 0
    for run in runs:
        epochs = int(run.data.metrics.get(metrics.EPOCHS_RUN.key, 0))
        for key in metrics.EPOCH_METRICS:
            steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
            missing_steps += len(set(range(1, epochs + 1)) - set(steps)) + (0 if epochs else 1)
        missing_params += len(set(FIELD_NAMES) - set(run.data.params))
        missing_final += len({metrics.TEST_ACCURACY.key, metrics.BEST_VAL_ACCURACY.key, metrics.STORE_SECONDS.key} - set(run.data.metrics))
        missing_artifacts += len(wanted_artifacts - {item.path for item in client.list_artifacts(run.info.run_id)})
    parent = store.find_sweep_run(experiment)
    return {
        "trials": trials, "trial_runs": len(runs), "fingerprints_finished_once": sum(1 for n in finished.values() if n == 1),
        "fingerprints_finished_twice_or_more": sum(1 for n in finished.values() if n > 1),
        "runs_finished": statuses["FINISHED"], "runs_running": statuses["RUNNING"],
        "runs_failed_or_killed": statuses["FAILED"] + statuses["KILLED"], "missing_epoch_steps": missing_steps,
        "missing_params": missing_params, "missing_final_metrics": missing_final, "missing_artifacts": missing_artifacts,
        "parent_run_status": store.run_status(parent) if parent else "none",
    }  # fmt: skip


def intact(counted: dict) -> bool:
    return (counted["fingerprints_finished_once"] == counted["trial_runs"] == counted["trials"] and counted["parent_run_status"] == "FINISHED"
            and not any(counted[key] for key in ("fingerprints_finished_twice_or_more", "runs_running", "missing_epoch_steps",
                                                 "missing_params", "missing_final_metrics", "missing_artifacts")))  # fmt: skip


def store_seconds(experiment: str) -> list[float]:
    from imagebench import store
    from imagebench.core import metrics

    return [run.data.metrics[metrics.STORE_SECONDS.key] for run in store.search_trial_runs(experiment)
            if metrics.STORE_SECONDS.key in run.data.metrics]  # fmt: skip


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


# --- the phases
def load_sweep(label: str, project: Path, uri: str, trials: int, workers: int, sampler: Sampler | None = None) -> dict:
    from imagebench import store

    experiment = f"load-{label}"
    path = sweep_file(project, experiment, trials)
    print(f"{label}: {trials} trials, {workers} workers into {uri}", flush=True)
    if sampler:
        sampler.start()
    started = time.perf_counter()
    code, out, err = finish(start_sweep(project, path, uri, workers))
    wall = time.perf_counter() - started
    if sampler:
        sampler.stopping.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{label}: the sweep exited {code}:\n{out[-3000:]}\n{err[-3000:]}")
    with store.using_store(uri):
        counted, writes = count_record(experiment, trials), store_seconds(experiment)
    figures = {"store": uri.split(":")[0], "trials": trials, "workers": workers, "wall_seconds": wall, "runs_per_minute": trials / wall * 60,
               "store_seconds_p50": percentile(writes, 0.5), "store_seconds_p99": percentile(writes, 0.99),
               "store_seconds_max": max(writes), "record_intact": intact(counted), **counted, **(sampler.figures() if sampler else {})}  # fmt: skip
    print(f"  {wall:.0f} s, {figures['runs_per_minute']:.1f} runs/min, store writes per trial p50 {figures['store_seconds_p50']:.2f} s "
          f"p99 {figures['store_seconds_p99']:.2f} s, record intact: {figures['record_intact']}", flush=True)  # fmt: skip
    return figures


def two_experiments_at_once(project: Path, uri: str, trials: int) -> dict:
    """Two shells, two sweeps of different experiments, one server: both must complete whole."""
    from imagebench import store

    names = ("pair-a", "pair-b")
    started = time.perf_counter()
    sweeps = [start_sweep(project, sweep_file(project, name, trials), uri, 2) for name in names]
    codes = [finish(sweep) for sweep in sweeps]
    wall = time.perf_counter() - started
    with store.using_store(uri):
        counted = {name: count_record(name, trials) for name in names}
    print(f"two experiments at once: exits {[code for code, _, _ in codes]}, intact {[intact(c) for c in counted.values()]}", flush=True)
    return {"trials_each": trials, "workers_each": 2, "wall_seconds": wall, "exit_codes": " ".join(str(code) for code, _, _ in codes),
            "both_intact": all(code == 0 for code, _, _ in codes) and all(intact(c) for c in counted.values()),
            **{f"{name}_{key}": value for name, figures in counted.items() for key, value in figures.items() if isinstance(value, int)}}  # fmt: skip


def same_sweep_twice(label: str, projects: tuple[Path, Path], uri: str, trials: int) -> dict:
    """The same sweep file started twice at once: one runs, the other refuses (exit 2); every
    fingerprint trained once. From one project folder (the file lock) or two (the parent run's claim)."""
    from imagebench import store

    experiment = f"twice-{label}"
    paths = [sweep_file(project, experiment, trials) for project in projects]
    sweeps = [start_sweep(project, path, uri, 2) for project, path in zip(projects, paths)]
    ended = [finish(sweep) for sweep in sweeps]
    refusals = [err.strip().splitlines()[-1] for code, _, err in ended if code == 2 and err.strip()]
    with store.using_store(uri):
        counted = count_record(experiment, trials)
    codes = sorted(code for code, _, _ in ended)
    print(f"same sweep twice ({label}): exits {codes}; {refusals[0][:160] if refusals else 'no refusal'}", flush=True)
    return {"trials": trials, "exit_codes": " ".join(map(str, codes)), "refused": codes == [0, 2],
            "refusal": refusals[0] if refusals else "", "no_fingerprint_twice": counted["fingerprints_finished_twice_or_more"] == 0,
            "record_intact": intact(counted), **{key: value for key, value in counted.items() if isinstance(value, int)}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials of the load sweep (each store)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pair-trials", type=int, default=8, help="trials of each sweep in the two concurrency checks")
    args = parser.parse_args()
    from imagebench import server

    base = Path(tempfile.mkdtemp(prefix="ib-bench-load-"))
    os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user when started by root: it must pass
    os.environ["IMAGEBENCH_CACHE"] = str(base / "cache")  # one warm decode cache for every sweep
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    port = free_port()
    db_port = free_port((port,))
    results: dict = {}
    try:
        running = server.start(base / "server", port=port, db_port=db_port)
        project = new_project(base / "project-server")
        sampler = Sampler(base / "server", port, db_port, running.pid)
        results["postgres"] = load_sweep("postgres", project, running.uri, args.trials, args.workers, sampler)
        results["two_experiments_at_once"] = two_experiments_at_once(project, running.uri, args.pair_trials)
        results["same_sweep_twice_one_machine"] = same_sweep_twice("one-machine", (project, project), running.uri, args.pair_trials)
        other = new_project(base / "project-second-machine")
        results["same_sweep_twice_two_machines"] = same_sweep_twice("two-machines", (project, other), running.uri, args.pair_trials)
        server.stop(base / "server")
        sqlite_project = new_project(base / "project-sqlite")
        results["sqlite"] = load_sweep("sqlite", sqlite_project, f"sqlite:///{sqlite_project / 'mlflow.db'}", args.trials, args.workers)
    finally:
        server.stop(base / "server")
        shutil.rmtree(base, ignore_errors=True)
    write_record(
        "server_load", [results["sqlite"]["runs_per_minute"]], [results["postgres"]["runs_per_minute"]], "runs per minute",
        "every run FINISHED once, every epoch step, param and artifact present, nothing RUNNING; the same sweep twice at once "
        "never trains a fingerprint twice", higher_is_better=True, packages=["mlflow", "papermill", "torch", "psycopg2-binary", "SQLAlchemy"],
        notes=f"{args.trials} tiny torch cnn trials (digits, 32 px, 12 images per class, 1 epoch), `imagebench sweep --workers "
              f"{args.workers} --no-models`: baseline the embedded SQLite store, ours the PostgreSQL-backed `mlflow server` "
              f"({server.DEFAULT_WORKERS} workers) on 127.0.0.1; then {args.pair_trials}-trial sweeps two at once",
        extra={"trials": args.trials, "workers": args.workers, **results},
    )  # fmt: skip
    problems = [name for name, figures in results.items() if not figures.get("record_intact", figures.get("both_intact", True))]
    problems += [name for name, figures in results.items() if name.startswith("same_sweep") and not (figures["refused"] and figures["no_fingerprint_twice"])]
    if problems:
        raise SystemExit(f"not as it should be: {', '.join(problems)} (see {REPO / 'results' / 'benchmarks' / 'server_load.json'})")


if __name__ == "__main__":
    main()
