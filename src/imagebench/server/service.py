"""The ``mlflow server`` process in front of the PostgreSQL cluster: start, stop, status and the
command line ``python -m imagebench.server`` (``make server``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from imagebench.server.common import DEFAULT_DB_PORT, DEFAULT_HOST, DEFAULT_PORT, LOCAL_HOSTS, Say, ServerError, _check_port_free, _quiet
from imagebench.server.postgres import DB_HOST, PGPASS, _pgdata, _secret, _write_private, backend_uri, database_port, pg_bin_dir, start_database, stop_database

DEFAULT_WORKERS = 2  # MLflow's default is 4 uvicorn workers; each holds MLflow in memory
START_TIMEOUT = 120.0  # seconds for `mlflow server` to answer /health (its first start creates the schema)
EXIT_OK, EXIT_NOT_RUNNING, EXIT_ERROR = 0, 1, 2
# `make server` takes no options: these choose its ports (a second server on one machine, a test)
ENV_PORT, ENV_DB_PORT = "IMAGEBENCH_SERVER_PORT", "IMAGEBENCH_SERVER_DB_PORT"
MLFLOW_LOG, MLFLOW_PID, STATE, ARTIFACTS = "mlflow-server.log", "mlflow-server.pid", "server.json", "artifacts"
AUTH_INI, AUTH_DB, FLASK_SECRET = "basic_auth.ini", "basic_auth.db", "flask-secret-key"


@dataclass
class TrackingServer:
    folder: Path
    host: str
    port: int
    db_port: int
    pid: Optional[int] = None
    app_name: Optional[str] = None

    @property
    def uri(self) -> str:
        """What a client on this machine sets as MLFLOW_TRACKING_URI."""
        return f"http://{_url_host(_client_host(self.host))}:{self.port}"

    @property
    def backend_uri(self) -> str:
        return backend_uri(self.db_port)


@dataclass
class ServerStatus:
    folder: Path
    database: Optional[int]  # the port PostgreSQL listens on, None when it is not running
    mlflow_pid: Optional[int]
    uri: Optional[str]
    answers: bool  # /health answered

    @property
    def running(self) -> bool:
        return self.database is not None and self.answers

    def lines(self) -> list[str]:
        db = f"PostgreSQL: running on {DB_HOST}:{self.database}" if self.database else "PostgreSQL: not running"
        if self.mlflow_pid and self.answers:
            ml = f"mlflow server: running (pid {self.mlflow_pid}) at {self.uri}"
        elif self.mlflow_pid:
            ml = f"mlflow server: process {self.mlflow_pid} runs but {self.uri}/health does not answer (see {self.folder / MLFLOW_LOG})"
        else:
            ml = "mlflow server: not running"
        return [f"folder: {self.folder}", db, ml]


def default_folder() -> Path:
    from imagebench.store import project_root

    return project_root() / ".server"


def _folder(folder) -> Path:
    return Path(folder).resolve() if folder else default_folder()


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- mlflow server
def _mlflow_pid(folder: Path) -> Optional[int]:
    """The pid in mlflow-server.pid if that process is still our `mlflow server` (not a reused pid)."""
    import psutil

    try:
        pid = int((folder / MLFLOW_PID).read_text().strip())
        command = " ".join(psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if "mlflow" in command and "server" in command and str(folder / ARTIFACTS) in command else None


def _answers(uri: str, timeout: float = 2.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    try:
        with opener.open(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_state(folder: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / STATE).read_text())
    return {}


def _mlflow_executable() -> list[str]:
    beside = Path(sys.executable).parent / "mlflow"
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "mlflow"]


def _auth_config(folder: Path) -> Path:
    """basic_auth.ini in the folder (mode 600): users in basic_auth.db beside it, a random first
    admin password (MLflow ships none); MLflow uses these only to create the admin the first time."""
    path = folder / AUTH_INI
    if not path.exists():
        _write_private(path, "[mlflow]\n"
                             "default_permission = READ\n"
                             f"database_uri = sqlite:///{folder / AUTH_DB}\n"
                             "admin_username = admin\n"
                             f"admin_password = {secrets.token_urlsafe(18)}\n"
                             "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def start_mlflow(folder: Path, host: str, port: int, db_port: int, app_name: Optional[str] = None,
                 allowed_hosts: Optional[str] = None, workers: int = DEFAULT_WORKERS, timeout: float = START_TIMEOUT,
                 say: Say = _quiet) -> TrackingServer:
    server = TrackingServer(folder, host, port, db_port, app_name=app_name)
    pid = _mlflow_pid(folder)
    if pid is not None:
        state = _read_state(folder)
        server = TrackingServer(folder, state.get("host", host), state.get("port", port), db_port, pid, state.get("app_name"))
        if (server.host, server.port, server.app_name) != (host, port, app_name):
            say(f"mlflow server already runs at {server.uri} (pid {pid}, app {server.app_name or 'default'}): "
                f"using it; `stop` first to change its host, port or app")
        _wait_until_answers(server, None, timeout)
        return server
    _check_port_free(host or "0.0.0.0", port, "--port")
    artifacts = folder / ARTIFACTS
    artifacts.mkdir(exist_ok=True)
    command = [*_mlflow_executable(), "server", "--backend-store-uri", backend_uri(db_port), "--serve-artifacts",
               "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    environment = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "MLFLOW_TRACKING_URI")}
    environment["PGPASSFILE"] = str(folder / PGPASS)  # libpq reads the password from here: it is in no URI
    environment.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local server has no reason to phone home
    # MLflow 3 also starts a job runner and 7 huey consumers (~650 MB) for its GenAI jobs: not ours
    environment.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if app_name:
        command += ["--app-name", app_name]
        if app_name == "basic-auth":
            environment["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_config(folder))
            # the auth app's CSRF protection needs a key that stays the same across restarts
            environment.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret(folder / FLASK_SECRET))
    log = folder / MLFLOW_LOG
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} imagebench.server: {shlex.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, cwd=folder, env=environment, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # own group: stop takes its workers too
    (folder / MLFLOW_PID).write_text(f"{process.pid}\n")
    server.pid = process.pid
    (folder / STATE).write_text(json.dumps({**asdict(server), "folder": str(folder), "started": time.time()}, indent=2))
    try:
        _wait_until_answers(server, process, timeout)
    except BaseException:  # not answering, or Ctrl-C while waiting: no server left behind in its own session
        _kill_group(process.pid)
        (folder / MLFLOW_PID).unlink(missing_ok=True)
        raise
    if (folder / AUTH_DB).exists():
        os.chmod(folder / AUTH_DB, 0o600)  # MLflow's users and their password hashes
    say(f"mlflow server (pid {process.pid}) answers at {server.uri}; log: {log}")
    return server


def _wait_until_answers(server: TrackingServer, process: Optional[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(server.uri):
            return
        if process is not None and process.poll() is not None:
            raise ServerError(f"mlflow server exited with code {process.returncode} while starting:\n"
                              f"{_tail(server.folder / MLFLOW_LOG)}\n(whole log: {server.folder / MLFLOW_LOG})")
        time.sleep(0.25)
    raise ServerError(f"mlflow server did not answer {server.uri}/health within {timeout:.0f}s; "
                      f"see its log {server.folder / MLFLOW_LOG}:\n{_tail(server.folder / MLFLOW_LOG)}")


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


def _kill_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM to the server's whole process group (uvicorn workers, job runner), SIGKILL after ``grace``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child (start and stop in one process)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def stop_mlflow(folder: Path) -> bool:
    pid = _mlflow_pid(folder)
    (folder / MLFLOW_PID).unlink(missing_ok=True)
    if pid is None:
        return False
    _kill_group(pid)
    return True


# --- the three commands
def start(folder=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, db_port: int = DEFAULT_DB_PORT,
          app_name: Optional[str] = None, allowed_hosts: Optional[str] = None, workers: int = DEFAULT_WORKERS,
          timeout: float = START_TIMEOUT, say: Say = _quiet) -> TrackingServer:
    """Start PostgreSQL and `mlflow server` (each only if not already running) from ``folder``."""
    folder = _folder(folder)
    if importlib.util.find_spec("psycopg2") is None:
        raise ServerError(f"psycopg2 (MLflow's PostgreSQL driver) is not installed in {sys.prefix}: "
                          f"pip install -e '.[server]' (or pip install psycopg2-binary)")
    if app_name == "basic-auth" and importlib.util.find_spec("flask_wtf") is None:
        raise ServerError(f"MLflow's basic-auth app needs Flask-WTF, not installed in {sys.prefix}: pip install 'mlflow[auth]'")
    pg_bin_dir(_pgdata(folder))  # every check that can fail before anything is created or started
    if _mlflow_pid(folder) is None:
        _check_port_free(host or "0.0.0.0", port, "--port")
    was_running = _pgdata(folder).is_dir() and database_port(folder) is not None
    if not was_running:
        _check_port_free(DB_HOST, db_port, "--db-port")
    running_db = start_database(folder, db_port, say)
    try:
        return start_mlflow(folder, host, port, running_db, app_name, allowed_hosts, workers, timeout, say)
    except BaseException:
        if not was_running:  # a failed start leaves nothing running that it started
            with contextlib.suppress(ServerError):
                stop_database(folder)
        raise


def stop(folder=None) -> list[str]:
    """Stop `mlflow server` and PostgreSQL; what was running. Stopping what is not running is fine."""
    folder = _folder(folder)
    stopped = []
    if stop_mlflow(folder):
        stopped.append("mlflow server")
    if _pgdata(folder).is_dir() and stop_database(folder):
        stopped.append("PostgreSQL")
    return stopped


def status(folder=None) -> ServerStatus:
    folder = _folder(folder)
    state = _read_state(folder)
    pid = _mlflow_pid(folder)
    uri = TrackingServer(folder, state["host"], state["port"], 0).uri if state.get("port") else None
    return ServerStatus(folder, database_port(folder), pid, uri, bool(pid and uri and _answers(uri)))


def exposure_warning(host: str, app_name: Optional[str]) -> Optional[str]:
    if host in LOCAL_HOSTS:
        return None
    auth = ("Every client must authenticate: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in its environment "
            "(never in a notebook or params file)." if app_name == "basic-auth" else
            "There is NO authentication: anyone who can reach this port can read and change every run. "
            "Add MLflow's own authentication with --app-name basic-auth.")
    return (f"WARNING: --host {host} serves the tracking server beyond this machine. {auth} MLflow only accepts "
            f"Host headers of localhost and private addresses unless you pass --allowed-hosts NAME[,NAME...].")


def port_from_environment(variable: str, fallback: int) -> int:
    """The port named by ``$variable``, else ``fallback``; ServerError naming the variable if it is no port."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return fallback
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ServerError(f"{variable}={value!r} is not a port number (1-65535): set a free port or unset it")
    return int(value)


def build_parser(port: int = DEFAULT_PORT, db_port: int = DEFAULT_DB_PORT) -> argparse.ArgumentParser:
    """``python -m imagebench.server`` (= ``imagebench server``); ``main`` passes the ports' defaults from the environment."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--folder", help="where the database, artifacts and logs live (default: <project root>/.server)")
    parser = argparse.ArgumentParser(prog="python -m imagebench.server",
                                     description="The shared MLflow tracking server on PostgreSQL (data in .server/).")
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", parents=[common], help="start PostgreSQL and mlflow server (creates them the first time)")
    begin.add_argument("--host", default=DEFAULT_HOST, help="interface to serve on (default 127.0.0.1: this machine only)")
    begin.add_argument("--port", type=int, default=port, help=f"mlflow server port (default ${ENV_PORT}, else {DEFAULT_PORT})")
    begin.add_argument("--db-port", type=int, default=db_port,
                       help=f"PostgreSQL port on 127.0.0.1 (default ${ENV_DB_PORT}, else {DEFAULT_DB_PORT})")
    begin.add_argument("--app-name", choices=("basic-auth",), help="MLflow's authentication (users and passwords)")
    begin.add_argument("--allowed-hosts", help="Host headers MLflow accepts beyond localhost and private IPs (comma-separated)")
    begin.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"uvicorn worker processes (default {DEFAULT_WORKERS})")
    begin.add_argument("--timeout", type=float, default=START_TIMEOUT, help="seconds to wait for the server to answer")
    commands.add_parser("stop", parents=[common], help="stop mlflow server and PostgreSQL (data stays)")
    commands.add_parser("status", parents=[common], help="what runs; exit 0 when the server answers, 1 otherwise")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        port, db_port = port_from_environment(ENV_PORT, DEFAULT_PORT), port_from_environment(ENV_DB_PORT, DEFAULT_DB_PORT)
    except ServerError as exc:
        print(f"imagebench.server: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser(port, db_port).parse_args(argv)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731 (stdout: only the export line)
    try:
        if args.command == "start":
            warning = exposure_warning(args.host, args.app_name)
            if warning:
                say(warning)
            started = time.monotonic()
            server = start(args.folder, args.host, args.port, args.db_port, args.app_name, args.allowed_hosts,
                           args.workers, args.timeout, say)
            say(f"ready in {time.monotonic() - started:.1f}s; stop it with: python -m imagebench.server stop"
                + (f" --folder {server.folder}" if args.folder else ""))
            if server.app_name == "basic-auth":
                say(f"basic-auth: first admin user 'admin', its password in {server.folder / AUTH_INI} (readable by you only); "
                    f"create users and change that password through MLflow's auth API or UI")
            print(f"export MLFLOW_TRACKING_URI={server.uri}")
            return EXIT_OK
        if args.command == "stop":
            stopped = stop(args.folder)
            say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
            return EXIT_OK
        state = status(args.folder)
        for line in state.lines():
            print(line)
        return EXIT_OK if state.running else EXIT_NOT_RUNNING
    except ServerError as exc:
        print(f"imagebench.server: error: {exc}", file=sys.stderr)
        return EXIT_ERROR

