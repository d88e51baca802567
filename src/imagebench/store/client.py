"""The MLflow client every write goes through, retried with backoff for the store patience."""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Optional

from imagebench.core.contract import ENV_STORE_PATIENCE
from imagebench.store.paths import tracking_uri

# Several processes (the sweep, parallel trial kernels) write one SQLite store; SQLite answers
# "database is locked" when a writer holds it, and a tracking server may be briefly unreachable.
# Every client call is retried with backoff on those errors for up to the store patience, so no
# metric is dropped by a short outage. A store still down after that is StoreUnavailable: the
# trial's recorder (``record.RunRecorder``) then keeps the rest of its record in a local journal.
RETRY_MARKERS = ("database is locked", "database table is locked", "busy", "connection refused",
                 "max retries exceeded", "temporarily unavailable", "unable to open database file",
                 "disk i/o error", "failed to establish a new connection", "connection aborted",
                 "connection reset", "read timed out", "service unavailable", "bad gateway")  # fmt: skip
DEFAULT_STORE_PATIENCE = 60.0  # seconds a store may be unreachable before a write is given up
FIRST_DELAY, LONGEST_DELAY = 0.05, 5.0


class StoreUnavailable(RuntimeError):
    """The MLflow store did not answer within the store patience (``$IMAGEBENCH_STORE_PATIENCE``)."""

    @classmethod
    def after(cls, uri: str, seconds: float, cause: BaseException) -> "StoreUnavailable":
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        return cls(
            f"MLflow store {uri} still unavailable after {seconds:.0f}s of retries ({type(cause).__name__}: {first_line}). "
            f"Check that the tracking server runs / the database file is not held by another program; "
            f"wait longer with {ENV_STORE_PATIENCE}=SECONDS"
        )


def store_patience() -> float:
    text = os.environ.get(ENV_STORE_PATIENCE, "").strip()
    if not text:
        return DEFAULT_STORE_PATIENCE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{ENV_STORE_PATIENCE}={text!r} is invalid: give the seconds to wait for the MLflow store (e.g. 60)")
    return value


def is_transient(error: BaseException) -> bool:
    if isinstance(error, StoreUnavailable):
        return False  # already retried for the whole patience
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in RETRY_MARKERS)


def with_retries(call, *args, **kwargs):
    return _retried_for(store_patience(), call, *args, **kwargs)


def _retried_for(patience: float, call, *args, **kwargs):
    """``call``, retried on transient errors until ``patience`` seconds have passed (0: tried once)."""
    started, delay = time.monotonic(), FIRST_DELAY
    deadline = started + patience
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable.after(tracking_uri(), time.monotonic() - started, exc) from exc
            # jitter: writers must not retry in lock-step; the last sleep ends at the deadline, so a
            # patience is kept, not overrun by up to a whole delay
            time.sleep(min(delay * (1 + random.random()), left))
            delay = min(2 * delay, LONGEST_DELAY)


class RetryingClient:
    """MlflowClient whose every method retries transient store errors."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: with_retries(attribute, *args, **kwargs)


@lru_cache(maxsize=4)
def _client_for(uri: str):
    import logging

    from mlflow import MlflowClient

    # MLflow's SQL store logs every database error with a full traceback before raising it; the
    # error reaches us anyway (retried, or named in StoreUnavailable), so the traceback is noise
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # MLflow draws a "Downloading artifacts" bar for every artifact it fetches (the leaderboard reads
    # confusion matrices): noise in the CLI's output and in notebooks
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at: URL" whenever a run on a tracking server ends: links that open on
    # its GenAI pages. The links imagebench prints (ui_route) open the Model-training view instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return RetryingClient(MlflowClient(tracking_uri=uri))


def client():
    # creating the client opens the store (SQLite: a schema check that a held lock blocks): retried too
    return with_retries(_client_for, tracking_uri())


def _server_problem(uri: str, timeout: float) -> Optional[str]:
    """Why the tracking server at ``uri`` does not answer its health check, or None (a file or
    SQLite store always 'answers'; its problems surface as errors of their own). One request, no
    retries: MLflow's own retries of a request to a server that is down take minutes."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answers (an auth proxy or an older server without /health): MLflow's calls decide
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def check_store_answers(timeout: float = 5.0) -> None:
    """A tracking server that does not answer is named before a sweep creates anything."""
    uri = tracking_uri()
    problem = _server_problem(uri, timeout)
    if problem:
        raise StoreUnavailable(f"MLflow tracking server {uri} does not answer ({problem}): start it (`make server`) "
                               f"or set MLFLOW_TRACKING_URI to your team's server; nothing was run")  # fmt: skip


def check_store_now(timeout: float = 5.0) -> None:
    """Ask the store once, without waiting out an outage: StoreUnavailable at once when it does not
    answer. For a run that has already waited a whole patience for the store (its record went to a
    journal): waiting again would cost another patience for every write it still has."""
    uri = tracking_uri()
    problem = _server_problem(uri, timeout)
    if problem:
        raise StoreUnavailable(f"MLflow store {uri} does not answer ({problem})")
    _retried_for(0.0, lambda: _client_for(uri)._inner.search_experiments(max_results=1))


@contextmanager
def using_store(uri: Optional[str]):
    """Talk to ``uri`` inside the block (``imagebench relog`` writes to the store a journal names)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
