"""What the database and the MLflow service share: default addresses, the error, port checks."""

from __future__ import annotations

import contextlib
import socket
from typing import Callable

DEFAULT_HOST, DEFAULT_PORT, DEFAULT_DB_PORT = "127.0.0.1", 5000, 5433
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
Say = Callable[[str], None]


class ServerError(RuntimeError):
    """Something the user must fix before the server can run (exit code 2); the message says what."""


def _quiet(_: str) -> None:
    pass


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
