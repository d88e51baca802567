"""Shared fixtures. TensorFlow and torch never share a test process (importing both can segfault):
tests/backends/keras and tests/backends/torch import their framework at collection, so `make test` runs them in
pytest sessions of their own, and a plain `pytest` leaves tests/backends/torch out unless it is named."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from helpers import copy_project, free_ports

from imagebench import server
from imagebench.server import postgres

HERE = Path(__file__).resolve().parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _inside(arg: str, folder: Path) -> bool:
    path = Path(arg.split("::")[0]).resolve()
    return path == folder or folder in path.parents


def pytest_ignore_collect(collection_path, config):
    torch_tests = HERE / "backends" / "torch"
    if collection_path == torch_tests:
        return not any(_inside(arg, torch_tests) for arg in config.args)
    return None


@pytest.fixture(scope="session", autouse=True)
def no_scratch_folder_left_behind():
    """A Ray actor killed with its test cluster (a node stopped, a PID namespace ended) never runs its
    shutdown: after the session its scratch folder is removed the way the node's next actor would
    (``remove_abandoned_scratch``: only folders whose actor is dead; a live one stays)."""
    yield
    from imagebench.executors.node_storage import remove_abandoned_scratch

    remove_abandoned_scratch(Path(tempfile.gettempdir()))


@pytest.fixture(autouse=True)
def private_decode_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache: no test sees another's entries or writes into the repo."""
    monkeypatch.setenv("IMAGEBENCH_CACHE", str(tmp_path / "decode-cache"))
    return tmp_path / "decode-cache"


def _enter_project(monkeypatch, root: Path) -> Path:
    monkeypatch.setenv("IMAGEBENCH_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("IMAGEBENCH_RUN_ID", raising=False)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throw-away imagebench project: notebooks and params copied, its own MLflow store."""
    return _enter_project(monkeypatch, copy_project(tmp_path / "project"))


@pytest.fixture(scope="module")
def module_project(tmp_path_factory):
    """A throw-away project that one module's tests share (e.g. one tiny sweep that several tests read)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        root = copy_project(tmp_path_factory.mktemp("module") / "project")
        monkeypatch.setenv("IMAGEBENCH_CACHE", str(root.parent / "decode-cache"))
        yield _enter_project(monkeypatch, root)


# --- the shared tracking server (PostgreSQL + mlflow server), for the tests that need one
class Server:
    """The module's server: its folder, ports, and how long its starts took."""

    def __init__(self, folder: Path, port: int, db_port: int):
        self.folder, self.port, self.db_port = folder, port, db_port
        self.uri = f"http://127.0.0.1:{port}"
        self.timings: dict[str, float] = {}

    def start(self, label: str = "") -> server.TrackingServer:
        started = time.monotonic()
        running = server.start(self.folder, port=self.port, db_port=self.db_port)
        if label:
            self.timings[label] = time.monotonic() - started
        assert running.uri == self.uri
        return running

    def stop(self, label: str = "") -> list[str]:
        started = time.monotonic()
        stopped = server.stop(self.folder)
        if label:
            self.timings[label] = time.monotonic() - started
        return stopped

    @property
    def password(self) -> str:
        return postgres._password(self.folder)


@pytest.fixture(scope="module")
def tracking_server():
    # Not under pytest's tmp_path: run as root, PostgreSQL runs as the postgres user, who cannot
    # pass pytest's private (mode 700) folders; and the unix socket's path must stay short.
    base = Path(tempfile.mkdtemp(prefix="ib-server-"))
    os.chmod(base, 0o755)
    handle = Server(base / "server", *free_ports(2))
    try:
        handle.start("first start (initdb, schema)")
        yield handle
    finally:
        handle.stop()
        print("\ntracking server timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in handle.timings.items()))
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def on_server(tracking_server, project, monkeypatch):
    """A project whose store is the module's server (started again if a test left it down)."""
    tracking_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    return tracking_server
