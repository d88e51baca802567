"""The shared MLflow tracking server: runs and metrics in PostgreSQL, artifacts in the server's folder.

    python -m imagebench.server start [--folder DIR] [--host 127.0.0.1] [--port 5000] [--db-port 5433]
    python -m imagebench.server stop [--folder DIR]
    python -m imagebench.server status [--folder DIR]

Everything lives in one folder (default ``<project root>/.server/``) and survives restarts:

- ``pgdata/``: the PostgreSQL cluster (``initdb`` the first time only), listening on 127.0.0.1
  only, its unix socket inside ``pgdata/``; ``postgres.log`` beside it;
- ``pgpass``: the database password, generated once, mode 600, in libpq's PGPASSFILE format. Only
  the ``mlflow server`` process gets it, through ``$PGPASSFILE``, so the backend URI
  (``postgresql+psycopg2://imagebench@127.0.0.1:PORT/mlflow``) holds no password: none reaches a command
  line, a log, a notebook, a params file or an MLflow param or tag. PostgreSQL itself is only ever
  given the password's SCRAM verifier;
- ``artifacts/``: what the server stores for its clients (``--serve-artifacts``);
- ``mlflow-server.log``, ``mlflow-server.pid``, ``server.json`` (how it was started, no secret);
- with ``--app-name basic-auth``: ``basic_auth.ini`` (mode 600, holds the first admin password),
  ``basic_auth.db`` (MLflow's users and permissions) and ``flask-secret-key`` (mode 600, the key
  of the auth app's CSRF protection, kept across restarts).

PostgreSQL refuses to run as root: started by root, the cluster belongs to the ``postgres`` system
user and every PostgreSQL command runs through ``runuser -u postgres --``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import hashlib
import hmac
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_DB_PORT = "127.0.0.1", 5000, 5433
DEFAULT_WORKERS = 2  # MLflow's default is 4 uvicorn workers; each holds MLflow in memory
DB_HOST, DB_NAME, DB_USER = "127.0.0.1", "mlflow", "imagebench"
DB_OS_USER = "postgres"  # who owns the cluster when we are root
START_TIMEOUT = 120.0  # seconds for `mlflow server` to answer /health (its first start creates the schema)
EXIT_OK, EXIT_NOT_RUNNING, EXIT_ERROR = 0, 1, 2
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# `make server` takes no options: these choose its ports (a second server on one machine, a test)
ENV_PORT, ENV_DB_PORT = "IMAGEBENCH_SERVER_PORT", "IMAGEBENCH_SERVER_DB_PORT"

PGDATA, PGPASS, PG_LOG = "pgdata", "pgpass", "postgres.log"
MLFLOW_LOG, MLFLOW_PID, STATE, ARTIFACTS = "mlflow-server.log", "mlflow-server.pid", "server.json", "artifacts"
AUTH_INI, AUTH_DB, FLASK_SECRET = "basic_auth.ini", "basic_auth.db", "flask-secret-key"

Say = Callable[[str], None]


class ServerError(RuntimeError):
    """Something the user must fix before the server can run (exit code 2); the message says what."""


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


def backend_uri(db_port: int) -> str:
    # no password: psycopg2 (libpq) reads it from $PGPASSFILE, which only the server process gets.
    # The driver is named: SQLAlchemy 2.1 made psycopg 3 the default for a bare postgresql://
    return f"postgresql+psycopg2://{DB_USER}@{DB_HOST}:{db_port}/{DB_NAME}"


def default_folder() -> Path:
    from imagebench.tracking import project_root

    return project_root() / ".server"


def _folder(folder) -> Path:
    return Path(folder).resolve() if folder else default_folder()


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _quiet(_: str) -> None:
    pass


# --- PostgreSQL binaries and who runs them
def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _version_key(path: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in re.split(r"[./]", path))


def pg_bin_dir(pgdata: Optional[Path] = None) -> Path:
    """Where initdb, pg_ctl, postgres and psql are: the major version an existing cluster was made
    with if it is installed, else PATH, else the newest /usr/lib/postgresql/*/bin (Debian layout)."""
    wanted = None
    if pgdata is not None and (pgdata / "PG_VERSION").is_file():
        wanted = (pgdata / "PG_VERSION").read_text().strip()
        debian = Path(f"/usr/lib/postgresql/{wanted}/bin")
        if (debian / "initdb").is_file():
            return debian
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)]
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise ServerError(
        "PostgreSQL is not installed: no initdb, pg_ctl and postgres on PATH or under /usr/lib/postgresql/*/bin. "
        "Install the server, e.g. `sudo apt-get install postgresql` (Debian/Ubuntu), `brew install postgresql` "
        "(macOS) or `conda install -c conda-forge postgresql`, then run again"
        + (f" (the cluster in {pgdata} was made by PostgreSQL {wanted})" if wanted else "")
    )


def _psql(bin_dir: Path) -> str:
    found = bin_dir / "psql"
    if found.is_file():
        return str(found)
    on_path = shutil.which("psql")
    if not on_path:
        raise ServerError(f"PostgreSQL's psql is missing (not in {bin_dir} nor on PATH): install the postgresql client")
    return on_path


def _as_db_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", DB_OS_USER, "--", *command] if _is_root() else command


def _db_owner_ids() -> Optional[tuple[int, int]]:
    """(uid, gid) of the postgres system user when we are root, else None (we own the cluster)."""
    if not _is_root():
        return None
    import pwd

    try:
        entry = pwd.getpwnam(DB_OS_USER)
    except KeyError:
        raise ServerError(
            f"PostgreSQL refuses to run as root, and there is no '{DB_OS_USER}' system user to run it as "
            f"(`apt-get install postgresql` creates one). Run as a normal user, or create the user."
        ) from None
    if shutil.which("runuser") is None:
        raise ServerError("running as root needs `runuser` (util-linux) to start PostgreSQL as the postgres user")
    return entry.pw_uid, entry.pw_gid


def _pg(command: list[str], folder: Path, what: str, input: Optional[str] = None, timeout: float = 120) -> str:
    """Run a PostgreSQL command as the cluster's owner; its output on success, ServerError otherwise."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # no stray PGPASSWORD/PGHOST
    environment.setdefault("LC_ALL", "C")
    try:
        done = subprocess.run(_as_db_owner(command), cwd=folder, env=environment, input=input, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} did not finish within {timeout:.0f}s (see {folder / PG_LOG})") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip())[-2000:]
        raise ServerError(f"{what} failed (exit {done.returncode}): {detail}\n(PostgreSQL's log: {folder / PG_LOG})")
    return done.stdout


# --- ports
def _port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _who_listens(port: int) -> str:
    try:
        import psutil

        for connection in psutil.net_connections("inet"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
                if connection.pid:
                    with contextlib.suppress(psutil.Error):
                        process = psutil.Process(connection.pid)
                        return f" by pid {connection.pid} ({process.name()})"
                return ""
    except Exception:  # not allowed to see other users' sockets: say nothing more
        pass
    return ""


def _check_port_free(host: str, port: int, option: str) -> None:
    if _port_taken(host, port):
        raise ServerError(
            f"port {port} on {host} is taken{_who_listens(port)}: stop that program or choose another port ({option} N)"
        )


# --- the password (generated once; PostgreSQL gets its SCRAM verifier, the server process the file)
def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier: CREATE ROLE ... PASSWORD '<verifier>' stores it as it is,
    so the password itself never reaches PostgreSQL, its log or any command."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte (never briefly world-readable)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def _secret(path: Path) -> str:
    """A random key kept in ``path`` (mode 600), made the first time."""
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text(encoding="utf-8").strip()


def _password(folder: Path) -> str:
    """The database password from ``pgpass`` (created the first time; fixed to mode 600 if widened:
    libpq ignores a password file others can read)."""
    path = folder / PGPASS
    if not path.exists():
        _write_private(path, f"# imagebench's MLflow server: PostgreSQL password (libpq PGPASSFILE format)\n"
                             f"{DB_HOST}:*:{DB_NAME}:{DB_USER}:{secrets.token_urlsafe(32)}\n")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    if not lines or len(lines[-1].split(":")) != 5:
        raise ServerError(f"{path} is not a password file (host:port:database:user:password); delete it to make a new one")
    return lines[-1].split(":")[4]


# --- PostgreSQL
def _pgdata(folder: Path) -> Path:
    return folder / PGDATA


def database_port(folder: Path) -> Optional[int]:
    """The port of the cluster in ``folder`` when it runs, else None (read from postmaster.pid)."""
    pid_file = _pgdata(folder) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        alive = process.name().startswith("postgres") and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return None
    return port if alive else None


def _prepare_folder(folder: Path) -> Path:
    owner = _db_owner_ids()
    folder.mkdir(parents=True, exist_ok=True)
    pgdata = _pgdata(folder)
    for path, mode in ((pgdata, 0o700), (folder / PG_LOG, 0o600)):
        if not path.exists():
            path.mkdir(mode=mode) if path is pgdata else path.touch(mode=mode)
        if owner:
            os.chown(path, *owner)
    socket_file = pgdata / f".s.PGSQL.{65535}"
    if len(str(socket_file)) > 100:  # sun_path holds 107 bytes
        raise ServerError(f"{folder} is too deep for PostgreSQL's unix socket ({len(str(socket_file))} > 100 characters): choose a shorter --folder")
    if owner:
        reach = subprocess.run(_as_db_owner(["test", "-w", str(pgdata), "-a", "-w", str(folder / PG_LOG)]), cwd="/")
        if reach.returncode != 0:
            raise ServerError(
                f"the '{DB_OS_USER}' user cannot reach {pgdata}: a folder above it is private to root "
                f"(e.g. mode 700). Choose a --folder the postgres user can traverse, or `chmod o+x` the private folder"
            )
    return pgdata


def start_database(folder: Path, db_port: int = DEFAULT_DB_PORT, say: Say = _quiet) -> int:
    """Start (the first time: create) the cluster in ``folder``; ensure the role and database. Its port."""
    bin_dir = pg_bin_dir(_pgdata(folder))
    pgdata = _prepare_folder(folder)
    running = database_port(folder)
    if running is None:
        if not (pgdata / "PG_VERSION").exists():
            say(f"creating the PostgreSQL cluster in {pgdata} (first start)")
            _pg([str(bin_dir / "initdb"), "-D", str(pgdata), "--auth-local=peer", "--auth-host=scram-sha-256",
                 "--encoding=UTF8", "--locale=C", "--no-instructions"], folder, "initdb")
        _check_port_free(DB_HOST, db_port, "--db-port")
        options = " ".join(shlex.quote(part) for part in (
            "-p", str(db_port), "-k", str(pgdata), "-c", f"listen_addresses={DB_HOST}", "-c", "password_encryption=scram-sha-256"))
        _pg([str(bin_dir / "pg_ctl"), "start", "-D", str(pgdata), "-l", str(folder / PG_LOG), "-w", "-t", "60", "-o", options],
            folder, "pg_ctl start")
        running = db_port
        say(f"PostgreSQL listening on {DB_HOST}:{db_port} (data: {pgdata})")
    elif running != db_port:
        say(f"PostgreSQL already runs on {DB_HOST}:{running} (not {db_port}): using it")
    _ensure_role_and_database(folder, bin_dir, running)
    return running


def _ensure_role_and_database(folder: Path, bin_dir: Path, db_port: int) -> None:
    """As the cluster's superuser, over the unix socket: the login role (with the password from
    pgpass, as a verifier) and its database. SQL on stdin: nothing on a command line."""
    verifier = _scram_verifier(_password(folder))
    sql = (
        f"SELECT format('CREATE ROLE %I LOGIN', '{DB_USER}') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}')\\gexec\n"
        f"ALTER ROLE {DB_USER} LOGIN PASSWORD '{verifier}';\n"
        f"SELECT format('CREATE DATABASE %I OWNER %I', '{DB_NAME}', '{DB_USER}') "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec\n"
    )
    _pg([_psql(bin_dir), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(_pgdata(folder)), "-p", str(db_port), "-d", "postgres",
         "-f", "-"], folder, "creating the MLflow role and database", input=sql)


def stop_database(folder: Path) -> bool:
    """``pg_ctl stop -m fast``; False when it was not running."""
    pgdata = _pgdata(folder)
    if database_port(folder) is None:
        return False
    _pg([str(pg_bin_dir(pgdata) / "pg_ctl"), "stop", "-D", str(pgdata), "-m", "fast", "-w", "-t", "60"], folder, "pg_ctl stop")
    return True


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


def main(argv: Optional[list[str]] = None) -> int:
    try:
        port, db_port = port_from_environment(ENV_PORT, DEFAULT_PORT), port_from_environment(ENV_DB_PORT, DEFAULT_DB_PORT)
    except ServerError as exc:
        print(f"imagebench.server: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
