"""One sweep of an experiment at a time: a second ``imagebench sweep`` of the same experiment refuses
(exit 2) instead of training every fingerprint a second time.

Two claims, both released by the owner's death (a crash or ``kill -9`` blocks nothing; the next
sweep resumes as always):

- **this machine**: an OS file lock (``flock``) on ``results/<experiment>/sweep.lock``, held for
  the whole sweep; the file names its holder (host:pid);
- **the store, across machines**: the parent run. Each sweep that drives it logs the param
  ``imagebench.sweep_claim.N`` (N = one more than the claims before it). MLflow never changes a
  param's value, so of two sweeps claiming the same N at once exactly one succeeds; a RUNNING
  parent run whose latest claimant is alive, or on another host (where nobody can tell), is a
  running sweep. Two parent runs created at once for a new experiment: the older one wins.

Different experiments never meet: their files and parent runs differ.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Optional

from imagebench import store
from imagebench.core.params import ParamsError

LOCK_FILE = "sweep.lock"
UNCLAIMED_GRACE_MS = 5 * 60 * 1000  # a new parent run not yet claimed (its sweep is between two calls)
# lock files this process holds, with how many of its SweepLocks share each: a second sweep of the
# experiment in the same Python (tests, a notebook) is the same owner, and flock would refuse it
_HELD: dict[Path, list] = {}


def lock_path(experiment: str) -> Path:
    return store.results_dir(experiment) / LOCK_FILE


class SweepAlreadyRunning(ParamsError):
    """Another sweep of the experiment runs now (bad input: exit 2); the message says what to do."""


def _refusal(experiment: str, owner: str, where: str) -> SweepAlreadyRunning:
    host, _, pid = owner.rpartition(":")
    stop = f"`kill {pid}` on {host}" if host else "stop that process"
    elsewhere = ("" if not host or store.owner_is_alive(owner) is not None else
                 f" If {host} is gone for good, end that parent run (KILLED, in the MLflow UI or "
                 f"MlflowClient().set_terminated(RUN_ID, 'KILLED')) and run again.")  # fmt: skip
    return SweepAlreadyRunning(
        f"sweep '{experiment}' is already running (owner {owner or 'unknown'}, {where}): this one would train its "
        f"trials a second time, so it stops here. Wait for that sweep to finish, or stop it (Ctrl-C in its "
        f"terminal, or {stop}) and run this command again: it resumes where that one stopped. A sweep whose "
        f"process is gone (crash, kill -9) does not block.{elsewhere}"
    )


class SweepLock:
    """The claims of one sweep run; ``release`` (or the process's end) gives them up."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._path: Optional[Path] = None

    # --- this machine
    def acquire(self) -> "SweepLock":
        path = lock_path(self.experiment).resolve()
        if path in _HELD:
            _HELD[path][1] += 1
            self._path = path
            return self
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise _refusal(self.experiment, holder, f"lock {path}") from None
        handle.truncate(0)
        handle.write(store.process_owner())
        handle.flush()
        _HELD[path], self._path = [handle, 1], path
        return self

    def release(self) -> None:
        if self._path is None:
            return
        held = _HELD[self._path]
        held[1] -= 1
        if not held[1]:
            held[0].close()  # closing the descriptor releases the flock
            del _HELD[self._path]
        self._path = None

    # --- the store
    def start_parent_run(self, source: str) -> str:
        """The sweep's parent run (``store.start_sweep_run``), claimed for this process; refused
        while another sweep of the experiment runs. The file lock is given up on refusal."""
        try:
            return self._claim_parent_run(source)
        except BaseException:
            self.release()
            raise

    def _claim_parent_run(self, source: str) -> str:
        before = store.find_sweep_run(self.experiment)
        if before is not None:  # its status before start_sweep_run sets it RUNNING again
            run = store.client().get_run(before)
            if run.info.status == "RUNNING" and _is_live(_claimant(run)):
                raise _refusal(self.experiment, _claimant(run), f"parent run {before}")
        parent = store.start_sweep_run(self.experiment, source)
        try:
            self._claim(parent)
            self._check_no_older_parent(parent)
        except SweepAlreadyRunning:
            if parent != before:  # made by this process: nothing else is on it
                store.client().delete_run(parent)
            raise
        return parent

    def _claim(self, parent: str) -> None:
        from mlflow.exceptions import MlflowException

        claims = _claims(store.client().get_run(parent))
        key = f"{store.PARAM_SWEEP_CLAIM}.{max(claims, default=0) + 1}"
        try:
            store.client().log_param(parent, key, store.process_owner())
        except MlflowException as exc:
            if "changing param values" not in str(exc).lower():
                raise
            winner = store.client().get_run(parent).data.params.get(key, "")
            raise _refusal(self.experiment, winner, f"parent run {parent}") from None

    def _check_no_older_parent(self, parent: str) -> None:
        """Two sweeps of a new experiment at once each make a parent run: the older one goes on."""
        mine = store.client().get_run(parent).info
        for run in store.client().search_runs(
            [store.experiment_id(self.experiment)], filter_string=f"tags.`{store.TAG_ROLE}` = 'sweep' and attributes.status = 'RUNNING'"
        ):
            other = run.info
            if other.run_id == parent or (other.start_time, other.run_id) > (mine.start_time, mine.run_id):
                continue
            owner = _claimant(run)
            unclaimed_young = not owner and store.now_ms() - other.start_time < UNCLAIMED_GRACE_MS
            if unclaimed_young or (owner and _is_live(owner)):
                raise _refusal(self.experiment, owner, f"parent run {other.run_id}")


def _claims(run) -> dict[int, str]:
    prefix = f"{store.PARAM_SWEEP_CLAIM}."
    return {int(key[len(prefix):]): value for key, value in run.data.params.items()
            if key.startswith(prefix) and key[len(prefix):].isdigit()}  # fmt: skip


def _claimant(run) -> str:
    """Who drives (or drove) the parent run: its latest claim, else its owner tag (runs made before claims)."""
    claims = _claims(run)
    return claims[max(claims)] if claims else run.data.tags.get(store.TAG_OWNER, "")


def _is_live(owner: Optional[str]) -> bool:
    """Alive, or on another host (cannot tell from here); not this very process (a second sweep in one Python)."""
    return bool(owner) and owner != store.process_owner() and store.owner_is_alive(owner) is not False
