"""The PostgreSQL cluster behind the tracking server: found on PATH or in Debian's folders, created
once in ``<folder>/pgdata``, run as the ``postgres`` user when we are root, listening on 127.0.0.1
only; its password lives in ``pgpass`` (mode 600) and only its SCRAM verifier reaches PostgreSQL."""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from imagebench.server.common import DEFAULT_DB_PORT, Say, ServerError, _check_port_free, _quiet

DB_HOST, DB_NAME, DB_USER = "127.0.0.1", "mlflow", "imagebench"
DB_OS_USER = "postgres"  # who owns the cluster when we are root
PGDATA, PGPASS, PG_LOG = "pgdata", "pgpass", "postgres.log"


def backend_uri(db_port: int) -> str:
    # no password: psycopg2 (libpq) reads it from $PGPASSFILE, which only the server process gets.
    # The driver is named: SQLAlchemy 2.1 made psycopg 3 the default for a bare postgresql://
    return f"postgresql+psycopg2://{DB_USER}@{DB_HOST}:{db_port}/{DB_NAME}"


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
