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

``common``: defaults, errors and port checks; ``postgres``: the PostgreSQL cluster; ``service``:
the ``mlflow server`` process, start/stop/status and the command line (``__main__``). From
outside, import the names below.
"""

from imagebench.server.common import (  # noqa: F401
    DEFAULT_DB_PORT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    LOCAL_HOSTS,
    ServerError,
)
from imagebench.server.postgres import (  # noqa: F401
    DB_HOST,
    DB_NAME,
    DB_OS_USER,
    DB_USER,
    PG_LOG,
    PGDATA,
    PGPASS,
    backend_uri,
    database_port,
    pg_bin_dir,
    start_database,
    stop_database,
)
from imagebench.server.service import (  # noqa: F401
    build_parser,
    ARTIFACTS,
    AUTH_DB,
    AUTH_INI,
    DEFAULT_WORKERS,
    ENV_DB_PORT,
    ENV_PORT,
    EXIT_ERROR,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    FLASK_SECRET,
    MLFLOW_LOG,
    MLFLOW_PID,
    START_TIMEOUT,
    STATE,
    ServerStatus,
    TrackingServer,
    default_folder,
    exposure_warning,
    main,
    port_from_environment,
    start,
    start_mlflow,
    status,
    stop,
    stop_mlflow,
)
