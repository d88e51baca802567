"""What a run records about where it came from: package versions, the git commit, the owning process."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Optional

from imagebench.store.paths import project_root


def package_versions(names: list[str]) -> dict[str, str]:
    """Installed versions of those of ``names`` that are installed (for the versions tag, benchmarks)."""
    import importlib.metadata as metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pinned_requirements(names: list[str]) -> list[str]:
    """``name==version`` of those of ``names`` that are installed (a logged model's pip requirements)."""
    return [f"{name}=={version}" for name, version in package_versions(names).items()]


def process_owner() -> str:
    """``host:pid`` of this process, tagged on runs it drives so a later sweep can tell abandoned runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_alive(owner: str) -> Optional[bool]:
    """True/False for an owner on this host; None when it ran elsewhere (cannot tell from here)."""
    import psutil

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return psutil.pid_exists(int(pid)) and int(pid) != os.getpid()
