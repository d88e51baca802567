"""Functions the tests share (fixtures live in conftest.py). No test module imports another."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata  # noqa: F401  (make_tree's NFD spelling)
from pathlib import Path

import psutil
from PIL import Image

from imagebench import store

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TINY = "dataset: digits, image_size: 32, batch_size: 64, max_per_class: 12, val_fraction: 0.25, test_fraction: 0.25"
KOREAN = "사과"  # "apple"


def write_sweep_file(project: Path, name: str, matrix: str, epochs: int = 2, extra: str = "") -> Path:
    path = project / "params" / f"{name}.yaml"
    path.write_text(f"experiment: {name}\nbase: {{{TINY}, epochs: {epochs}, framework: torch, model: cnn}}\n"
                    f"matrix: {matrix}\n{extra}")
    return path


def run_sweep(project, *args, timeout=600, models=False):
    # the leaders' models are test_publish's subject: published here only when asked (~10 s per sweep)
    return subprocess.run([str(BIN / "imagebench"), "sweep", *map(str, args), *([] if models else ["--no-models"])], cwd=project, capture_output=True,
                          text=True, timeout=timeout)


def trial_runs(experiment):
    return store.search_trial_runs(experiment)


def inject_cell(project: Path, source: str) -> None:
    """Give this test project's train.ipynb an extra cell before the trial runs (the user's copy is untouched)."""
    path = project / "notebooks" / "train.ipynb"
    notebook = json.loads(path.read_text())
    position = next(i for i, cell in enumerate(notebook["cells"]) if "parameters" in cell["metadata"].get("tags", [])) + 2
    notebook["cells"].insert(position, {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                                        "source": source})
    path.write_text(json.dumps(notebook))


def wait_for(predicate, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port() -> int:
    return free_ports(1)[0]


def save_image(path, mode, size=(20, 14), color=(200, 30, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color).convert(mode)
    image.save(path)


def make_tree(root, per_class=10):
    classes = {KOREAN: (220, 20, 20), "banana": (240, 230, 50), "10": (10, 10, 200), "2": (20, 200, 20)}
    for name, color in classes.items():
        for i in range(per_class):
            mode, ext = [("RGB", "png"), ("RGB", "jpg"), ("L", "png"), ("RGBA", "png")][i % 4]
            save_image(root / name / f"img_{i}.{ext}", mode, color=color)
    # the same Korean class again, spelled in NFD as macOS writes it: must merge, not add a class
    nfd = unicodedata.normalize("NFD", KOREAN)
    for i in range(2):
        save_image(root / nfd / f"mac_{i}.png", "RGB", color=classes[KOREAN])
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "banana" / ".hidden.png").write_bytes(b"junk")
    (root / ".ipynb_checkpoints").mkdir()
    save_image(root / ".ipynb_checkpoints" / "x.png", "RGB")
    (root / "banana" / "notes.txt").write_text("not an image")
    return classes


def recorded_trial(experiment, model, framework, val_acc, val_loss, test_acc, status="FINISHED", parent=None, flops=21_170_688):
    run_id = store.create_trial_run(
        experiment, f"{framework}-{model}-{val_acc}", {store.TAG_MODEL: model, store.TAG_FRAMEWORK: framework}, parent
    )
    store.log_params(run_id, {"learning_rate": round(val_acc / 100, 6), "optimizer": "adam"})
    if status == "FINISHED":
        store.log_metrics(run_id, {
            "best/val_accuracy": val_acc, "best/val_loss": val_loss, "test/accuracy": test_acc, "test/loss": 1 - test_acc,
            "cost/params": 1000 * (1 + val_acc), "cost/latency_ms": 2.0, "best_epoch": 3,
        })
        if flops is not None:  # runs recorded before cost/flops existed have none
            store.log_metrics(run_id, {"cost/flops": flops})
        for step, value in enumerate((val_acc / 2, val_acc), start=1):
            store.log_metrics(run_id, {"val/accuracy": value, "val/loss": 1 - value}, step=step)
        store.client().log_dict(run_id, {"labels": ["a", "b"], "matrix": [[3, 1], [0, 4]]}, store.ARTIFACT_CONFUSION_JSON)
    store.end_run(run_id, status, None if status == "FINISHED" else "boom")
    return run_id


def protocol_mismatches(target, protocol) -> list[str]:
    """What ``target`` (a backend or exporter module) lacks of ``protocol`` (a ``typing.Protocol``):
    a missing member, a method that is not callable, or one whose parameters a caller of the
    protocol could not pass (other names or order, a default the protocol has and it lacks, an extra
    parameter without a default). Empty when it satisfies the protocol."""
    import inspect

    problems = [f"{name} is missing" for name in getattr(protocol, "__annotations__", {}) if not hasattr(target, name)]
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        if not callable(getattr(target, name, None)):
            problems.append(f"{name}() is missing")
            continue
        wanted = list(inspect.signature(member).parameters.values())[1:]  # without self
        given = list(inspect.signature(getattr(target, name)).parameters.values())
        problems += [f"{name}(): {problem}" for problem in _parameter_mismatches(wanted, given)]
    return problems


def _parameter_mismatches(wanted, given) -> list[str]:
    import inspect

    problems = []
    for index, parameter in enumerate(wanted):
        theirs = given[index] if index < len(given) else None
        if theirs is None or theirs.name != parameter.name or theirs.kind != parameter.kind:
            problems.append(f"parameter {index + 1} is {_unannotated(theirs) or 'absent'}, the protocol says {_unannotated(parameter)}")
        elif parameter.default is not inspect.Parameter.empty and theirs.default is inspect.Parameter.empty:
            problems.append(f"{theirs.name} needs a default (the protocol's: {_unannotated(parameter)})")
    problems += [f"extra parameter {extra.name} has no default" for extra in given[len(wanted):]
                 if extra.default is inspect.Parameter.empty and extra.kind not in (extra.VAR_POSITIONAL, extra.VAR_KEYWORD)]  # fmt: skip
    return problems


def _unannotated(parameter) -> str:
    """``name`` or ``name=default``: the frameworks' annotations (keras.Model, nn.Module) differ from the protocol's by design."""
    return str(parameter.replace(annotation=parameter.empty)) if parameter is not None else ""


def copy_project(root: Path) -> Path:
    """The repository's notebooks and params copied into ``root``: a project imagebench finds from there."""
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "params", root / "params")
    return root


def run_shell(line: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """One documented command line in a shell, the project's .venv first on PATH, as a user's terminal has it."""
    import os

    environment = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(line, shell=True, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def run_imagebench(*args, cwd, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """``imagebench ARGS`` as a user types it (the venv's console script), output captured."""
    import sys

    command = [str(Path(sys.executable).parent / "imagebench"), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_refused(*args, message: str, cwd) -> None:
    """``imagebench ARGS`` is bad input: exit 2, and ``message`` on stderr says what and why."""
    refused = run_imagebench(*args, cwd=cwd)
    assert refused.returncode == 2 and message in refused.stderr, f"exit {refused.returncode}: {refused.stderr}"


def tiny_values(**overrides):
    """Trial values that train in seconds on the built-in digits."""
    values = dict(dataset="digits", image_size=32, epochs=1, batch_size=64, max_per_class=12, val_fraction=0.25, test_fraction=0.25)
    values.update(overrides)
    return values


def assert_documented_record(run_id: str, num_classes: int) -> None:
    """The child run holds exactly the documented MLflow record (docs/tutorials/reviewer.md "The MLflow record"; store/keys.py names it)."""
    from imagebench import store
    from imagebench.core import metrics
    from imagebench.core.params import FIELD_NAMES

    client = store.client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == set(FIELD_NAMES)
    expected_final = set(metrics.FINAL_METRICS) - (set() if num_classes > 5 else {"test/top5_accuracy"})
    if store.TAG_NOTEBOOK in run.data.tags:  # run by a sweep: its worker's part of the cost ledger too
        expected_final |= {metric.key for metric in metrics.SWEEP_COSTS}
    data_metrics = {"data/train_images", "data/val_images", "data/test_images", "data/classes", "data/skipped_files"}
    assert set(run.data.metrics) == set(metrics.EPOCH_METRICS) | expected_final | data_metrics
    for key in metrics.EPOCH_METRICS:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and history
    for tag in (store.TAG_FINGERPRINT, store.TAG_MODEL, store.TAG_FRAMEWORK, store.TAG_SWEEP,
                store.TAG_DATASET_FINGERPRINT, store.TAG_GIT_COMMIT, store.TAG_VERSIONS, store.TAG_ROLE):
        assert run.data.tags.get(tag), tag
    artifacts = {item.path for item in client.list_artifacts(run_id)}
    assert artifacts >= {store.ARTIFACT_CONFUSION_PNG, store.ARTIFACT_CONFUSION_JSON, store.ARTIFACT_CURVES_PNG,
                         store.ARTIFACT_REPORT, store.ARTIFACT_CLASS_MAP, store.ARTIFACT_PREDICTIONS}
    # every test image's prediction, read back from MLflow alone, gives the logged test accuracy
    from imagebench.store import predictions

    tested = predictions.load(run_id)
    assert len(tested.labels) == run.data.metrics["data/test_images"] and tested.probabilities.shape[1] == num_classes
    assert tested.accuracy == run.data.metrics[metrics.TEST_ACCURACY.key] and len(tested.test_set) == 32


def seed_predictions(correct, test_set: str = "same", class_names=("a", "b")):
    """One seed's ``TestPredictions`` with chosen per-image correctness (every image of class 0)."""
    import numpy as np

    from imagebench.store import predictions

    labels = np.zeros(len(correct), dtype=np.int32)
    predicted = np.where(correct, 0, 1).astype(np.int32)
    return predictions.TestPredictions(labels, predicted, np.eye(len(class_names), dtype=np.float16)[predicted], list(class_names), test_set)


def log_predictions(run_id: str, correct, folder, class_names=("a", "b")) -> None:
    """The artifact a trial logs (``store.predictions``), with chosen per-image correctness."""
    from imagebench.store import predictions

    path = folder / run_id / store.ARTIFACT_PREDICTIONS
    path.parent.mkdir(parents=True)
    path.write_bytes(predictions.to_bytes(seed_predictions(correct, class_names=class_names)))
    store.client().log_artifact(run_id, str(path))


def flower_folder(root: Path, per_class: int = 8) -> Path:
    """A tiny 2-class folder dataset (daisy, rose) of distinct 20-px PNGs."""
    for name in ("daisy", "rose"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (20, 20), (index * 30, 80, 40 if name == "daisy" else 200)).save(root / name / f"{index}.png")
    return root


# --- documented cluster blocks run as a user's shell runs them
LOOPBACK_IPS = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def ray_process(process: psutil.Process) -> bool:
    """A Ray process (GCS, raylet, dashboard, agents, actor workers) or the sweep's driver (--executor ray)."""
    command = " ".join(process.cmdline())
    return any(word in command for word in ("ray", "raylet", "gcs_server"))


class SocketWatch:
    """Every listening and connected socket of the Ray processes under ``root``, looked at every
    half second while the block runs: what is off loopback, and which Ray processes were seen."""

    def __init__(self, root: int):
        self.root, self.off_loopback, self.seen = root, set(), set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.5):
            try:
                family = psutil.Process(self.root).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for process in family:
                try:
                    if not ray_process(process):
                        continue
                    name = process.name()
                    sockets = process.net_connections(kind="inet")
                except psutil.Error:
                    continue  # it ended while we looked
                self.seen.add(name)
                for sock in sockets:
                    for address in (sock.laddr, sock.raddr):
                        if address and address.ip not in LOOPBACK_IPS:
                            self.off_loopback.add((name, sock.status, sock.laddr, sock.raddr))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def quickstart_project() -> Path:
    """A scratch project `make` works in (the Makefile, pyproject.toml with its time kept so the
    venv counts as installed, the venv linked). Not under pytest's tmp_path: PostgreSQL runs as the
    postgres user, who cannot pass pytest's private folders."""
    base = Path(tempfile.mkdtemp(prefix="ib-quick-"))
    os.chmod(base, 0o755)
    root = copy_project(base / "project")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def user_shell_environment(**extra: str) -> dict[str, str]:
    """A user's shell for a documented block: no Ray or MLflow settings of the test process (the
    commands must keep to loopback by themselves), the venv first on PATH, and ``extra``."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "IMAGEBENCH_ROOT")}
    return {**environment, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def run_in_own_pid_namespace(commands: list[str], cwd: Path, environment: dict[str, str], timeout: int = 900) -> tuple[int, str, "SocketWatch"]:
    """The lines in ``bash -ex`` in a PID namespace of their own (`ray stop` stops every Ray process
    it can see and must not see another test's cluster; what is left dies with the shell), every
    Ray socket watched: (exit status, output, the watch)."""
    # --kill-child: if the test kills unshare (a timeout), the namespace's init and with it every
    # process it started (Ray, PostgreSQL, mlflow server) die too, instead of living on orphaned
    shell = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-ex", "-c", "\n".join(commands)],
                             cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watch = SocketWatch(shell.pid)
    try:
        output, _ = shell.communicate(timeout=timeout)
    finally:
        watch.stop()
        if shell.poll() is None:
            shell.kill()
    return shell.returncode, output, watch
