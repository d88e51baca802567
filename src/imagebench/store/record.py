"""One trial run's record: written to the MLflow store, or kept in a local journal while the store is down.

Every write of a trial (params, epoch metrics, tags, artifacts, the end status) is an *entry*. A
``RunRecorder`` sends each entry to the store (``store.client`` retries a short outage for the store
patience). If the store stays down, the recorder stops trying for the rest of the run and appends
each entry to ``journal.jsonl`` in the run's record folder, artifacts saved beside it: the trial
trains to the end and then fails with ``StoreUnavailable`` naming the folder. Nothing is lost:
``imagebench relog FOLDER`` (or ``relog``) replays the journal once the store is back. Replaying
is safe to repeat: metrics keep their steps and timestamps (MLflow drops exact duplicates), params
and tags are written with the same values, artifacts overwrite themselves.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from imagebench.store.client import StoreUnavailable, check_store_now, client, using_store, with_retries
from imagebench.store.keys import TAG_RELOGGED
from imagebench.store.paths import runs_dir, tracking_uri
from imagebench.store.runs import end_run, log_batch, log_batches, log_dataset, log_metrics, log_params, now_ms, param_text, set_tags

JOURNAL = "journal.jsonl"
ARTIFACTS = "artifacts"
# Epoch metrics not yet sent: each store write is a round trip (~4 ms of CPU on sqlite, more to a
# server), so a trial's per-epoch metrics are held and sent together at most every
# EPOCH_SEND_SECONDS (the first at once: the UI shows a live run), and before any other write. Each
# held batch is appended here first, so a kernel that dies holding some loses none: the sweep
# sends what is left (send_unsent) when it closes the job.
UNSENT = "unsent.jsonl"
EPOCH_SEND_SECONDS = 5.0
from imagebench.core.contract import ENV_RECORD_DIR  # noqa: E402  (set by the sweep: the trial's folder)


class RelogError(RuntimeError):
    """A journal that cannot be replayed as it is (unreadable, or its run is not in the store)."""


def record_folder(experiment: str, run_name: str) -> Path:
    """Where a run keeps what the store did not take: ``$IMAGEBENCH_RECORD_DIR`` in a sweep, else
    ``results/<experiment>/runs/<run name>.record``."""
    if os.environ.get(ENV_RECORD_DIR):
        return Path(os.environ[ENV_RECORD_DIR])
    return run_record_folder(experiment, run_name)


def run_record_folder(experiment: str, run_name: str) -> Path:
    """The record folder of the run named ``run_name`` as the machine running the sweep keeps it."""
    return runs_dir(experiment) / f"{run_name}.record"


def relog_command(folder: Path) -> str:
    return f"imagebench relog {folder}"


def check_store_if_journaled(folder: Path) -> None:
    """A run whose record folder holds a journal has found the store gone for a whole patience:
    before anything else of that run waits for the store again (the sweep recording its job), the
    store is asked once, at once; StoreUnavailable, with the run's own reason, if it still does not
    answer. A run without a journal has waited for nothing yet: nothing to check."""
    journal = Path(folder) / JOURNAL
    if not journal.is_file():
        return
    try:
        check_store_now()
    except StoreUnavailable as exc:
        raise StoreUnavailable(_journal_reason(journal) or str(exc)) from exc


def _journal_reason(journal: Path) -> str:
    """Why the store was given up, as the journal's header says (the first line)."""
    with journal.open(encoding="utf-8") as handle:
        try:
            return json.loads(handle.readline()).get("reason", "")
        except json.JSONDecodeError:
            return ""


def _apply(run_id: str, entry: dict[str, Any], folder: Path) -> None:
    """Send one entry to the current store (the one place that knows how each kind is written);
    an artifact's relative path is inside the record ``folder``."""
    kind = entry["op"]
    if kind == "batch":
        log_batch(run_id, entry["metrics"], entry["params"], entry["tags"], entry["step"], entry["timestamp"])
    elif kind == "batches":  # held epoch metrics sent together; only ever sent live (each is journaled alone)
        log_batches(run_id, entry["entries"])
    elif kind == "artifacts":  # a folder sent whole; only ever sent live (offline, each file is journaled)
        client().log_artifacts(run_id, entry["folder"])
    elif kind == "params":  # params / metrics / tags: journals written before "batch" existed
        log_params(run_id, entry["values"])
    elif kind == "metrics":
        log_metrics(run_id, entry["values"], step=entry["step"], timestamp=entry["timestamp"])
    elif kind == "tags":
        set_tags(run_id, entry["values"])
    elif kind == "dataset":
        log_dataset(run_id, entry["name"], entry["digest"], entry["source"], entry["profile"])
    elif kind == "artifact":
        client().log_artifact(run_id, str(folder / entry["file"]), entry.get("artifact_path"))
    elif kind == "end":
        end_run(run_id, entry["status"], entry.get("error"), end_time=entry["end_time"])
    else:
        raise RelogError(f"unknown journal entry {kind!r}: written by a newer imagebench?")


class RunRecorder:
    """Writes one run's record; after the store has stayed down once, journals the rest locally."""

    def __init__(self, run_id: str, folder: Path, store_error: Optional[StoreUnavailable] = None):
        self.run_id, self.folder = run_id, Path(folder)
        self.store_error = store_error  # set: the store is down, every write goes to the journal
        self._held: list[dict[str, Any]] = []  # epoch metrics not sent yet (also in UNSENT)
        self._last_sent = float("-inf")  # monotonic time of the last held metrics sent
        self.store_seconds = 0.0  # wall time of this recorder's writes to the store (a store under load shows here)

    @property
    def offline(self) -> bool:
        return self.store_error is not None

    @property
    def journal(self) -> Path:
        return self.folder / JOURNAL

    def _send(self, entry: dict[str, Any]) -> bool:
        """Write ``entry`` to the store; False once the store is down (the caller journals it)."""
        if self.offline:
            return False
        started = time.perf_counter()
        try:
            _apply(self.run_id, entry, self.folder)
            return True
        except StoreUnavailable as exc:
            self.store_error = exc  # one patience spent is enough: the rest of the run goes to the journal
            return False
        finally:
            self.store_seconds += time.perf_counter() - started

    def _write(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "batch" and self._held:  # the held batches and this one in one round trip
            self._held.append(entry)
            self.send_held()
            return
        self.send_held()  # the store sees the run's writes in the order the trial made them
        if not self._send(entry):
            self._append(entry)

    def _hold(self, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / UNSENT).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")  # no fsync: a dead kernel's writes stay with the OS
        self._held.append(entry)

    def _hold_or_journal(self, entry: dict[str, Any]) -> bool:
        """Hold ``entry`` for the next write (True), or journal it at once while the store is down."""
        if self.offline:
            self._append(entry)
            return False
        self._hold(entry)
        return True

    def send_unsent(self) -> int:
        """Send the epoch metrics a trial held when its kernel died (its ``UNSENT`` file), or journal
        them if the store is down; returns how many epochs' batches there were."""
        unsent = self.folder / UNSENT
        if not unsent.is_file():
            return 0
        self._held = _whole_lines(unsent)
        held = len(self._held)
        self.send_held()  # (removes the file)
        return held

    def send_held(self) -> None:
        """Send the held epoch metrics in one write (journaled instead once the store is down)."""
        if not self._held:
            return
        held, self._held = self._held, []
        if self._send({"op": "batches", "entries": held}):
            self._last_sent = time.monotonic()
        else:
            for entry in held:
                self._append(entry)
        (self.folder / UNSENT).unlink(missing_ok=True)

    def _append(self, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = []
        if not self.journal.exists():
            lines.append({"op": "run", "run_id": self.run_id, "store": tracking_uri(), "reason": str(self.store_error)})
        lines.append(entry)
        with self.journal.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(line) + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())  # a kernel killed after this line still leaves it on disk

    def recorded_metrics(self, keys: Iterable[Any]) -> dict[str, float]:
        """The run's latest values of ``keys`` (metric keys, or ``Metric``s) in the store; {} once the
        store is down (a later rung's ledger then counts from zero rather than wait for it)."""
        if self.offline:
            return {}
        started = time.perf_counter()
        try:
            recorded = with_retries(lambda: client().get_run(self.run_id)).data.metrics
        except StoreUnavailable as exc:
            self.store_error = exc
            return {}
        finally:
            self.store_seconds += time.perf_counter() - started
        wanted = [getattr(key, "key", key) for key in keys]
        return {key: recorded[key] for key in wanted if key in recorded}

    # --- what a trial writes
    def log_batch(self, metrics: Optional[dict[str, float]] = None, params: Optional[dict[str, Any]] = None,
                  tags: Optional[dict[str, Any]] = None, step: int = 0) -> None:
        """Metrics (at ``step``), params and tags in one write: each write to a store is a round trip."""
        self._write(_batch_entry(metrics, params, tags, step))

    def log_epoch_metrics(self, values: dict[str, float], step: int) -> None:
        """An epoch's metrics, stamped now and held: sent with the next write, or with later epochs'
        after EPOCH_SEND_SECONDS (``UNSENT``)."""
        held = self._hold_or_journal(_batch_entry(values, None, None, step))
        if held and time.monotonic() - self._last_sent >= EPOCH_SEND_SECONDS:
            self.send_held()

    def log_batch_later(self, metrics: Optional[dict[str, float]] = None, params: Optional[dict[str, Any]] = None,
                        tags: Optional[dict[str, Any]] = None) -> None:
        """A batch held like epoch metrics (``UNSENT`` meanwhile) and sent with the run's next write,
        in the same round trip: what a trial writes as it starts needs no write of its own."""
        self._hold_or_journal(_batch_entry(metrics, params, tags, 0))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.log_batch(tags=tags)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
        self._write({"op": "dataset", "name": name, "digest": digest, "source": source, "profile": profile})

    def end(self, status: str, error: Optional[str] = None) -> None:
        self._write({"op": "end", "status": status, "error": error, "end_time": now_ms()})

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path).resolve()
        try:  # relative inside the record folder: the folder may travel (a Ray node's comes back to the sweep)
            stored = str(path.relative_to(self.folder.resolve()))
        except ValueError:
            stored = str(path)
        self._write({"op": "artifact", "file": stored, "artifact_path": artifact_path})

    def log_files(self, writers: dict[str, Callable[[Path], Any]]) -> None:
        """Artifacts named by the keys, each written by its writer into a temporary folder sent in one
        write; once offline, kept in the record folder instead (each journaled)."""
        self.send_held()
        if not self.offline:
            with tempfile.TemporaryDirectory(prefix="imagebench-artifact-") as scratch:
                for name, write in writers.items():
                    write(Path(scratch) / name)
                if self._send({"op": "artifacts", "folder": scratch}):
                    return  # (never journaled with this path: the files go with the temporary folder)
        for name, write in writers.items():
            kept = self.folder / ARTIFACTS / name
            kept.parent.mkdir(parents=True, exist_ok=True)
            write(kept)
            self.log_artifact(kept)

    def unavailable(self) -> StoreUnavailable:
        """The error a trial ends with when the store stayed down: where its record is and what to do."""
        return StoreUnavailable(
            f"{self.store_error}. Nothing is lost: the rest of run {self.run_id}'s record is in {self.journal}; "
            f"once the store is back, run `{relog_command(self.folder)}` (a sweep does it itself when it "
            f"can reach the store again)."
        )


def _batch_entry(metrics: Optional[dict[str, float]], params: Optional[dict[str, Any]], tags: Optional[dict[str, Any]],
                 step: int) -> dict[str, Any]:
    return {
        "op": "batch", "step": step, "timestamp": now_ms(),
        "metrics": {key: float(value) for key, value in (metrics or {}).items()},
        "params": {key: param_text(value) for key, value in (params or {}).items()},
        "tags": {key: str(value) for key, value in (tags or {}).items()},
    }  # fmt: skip


def _whole_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``; a line cut short by a kill mid-write is dropped."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def text_file(text: str) -> Callable[[Path], Any]:
    return lambda path: path.write_text(text, encoding="utf-8")


def json_file(data: Any) -> Callable[[Path], Any]:
    return lambda path: path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def bytes_file(data: bytes) -> Callable[[Path], Any]:
    return lambda path: path.write_bytes(data)


# --- replaying journals
@dataclass
class Relogged:
    journal: Path
    run_id: str
    entries: int
    status: Optional[str]  # the end status the journal held, None if the trial never reached its end


def read_journal(journal: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines, texts = [], journal.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(texts, 1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(texts):
                break  # the last line was cut short by a crash mid-write: everything before it counts
            raise RelogError(f"{journal}:{number}: not a journal line ({line[:80]!r}); the file was edited or damaged")
    if not lines or lines[0].get("op") != "run":
        raise RelogError(f"{journal}: no header line naming the run; not an imagebench journal")
    return lines[0], lines[1:]


def relog(journal: Path, store: Optional[str] = None) -> Relogged:
    """Replay one journal into ``store`` (default: the store it was meant for), then set it aside
    as ``journal.relogged-<time>.jsonl`` so it is not replayed again."""
    header, entries = read_journal(journal)
    run_id = header["run_id"]
    with using_store(store or header.get("store")):
        try:
            client().get_run(run_id)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise RelogError(
                f"{journal}: run {run_id} is not in the store {tracking_uri()} ({type(exc).__name__}); "
                f"re-log into the store the trial was written to: --store {header.get('store')}"
            ) from exc
        for entry in entries:
            _apply(run_id, entry, journal.parent)
        set_tags(run_id, {TAG_RELOGGED: f"{len(entries)} entries from {journal} ({header.get('reason', '')[:300]})"})
    journal.rename(journal.with_name(f"journal.relogged-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
    ends = [entry["status"] for entry in entries if entry["op"] == "end"]
    return Relogged(journal, run_id, len(entries), ends[-1] if ends else None)


def relog_all(journals: Iterable[Path], store: Optional[str] = None) -> tuple[list[Relogged], list[str]]:
    """Replay every journal; one that cannot be (damaged, run not in the store) is kept and its
    problem returned, the others still replayed. ``StoreUnavailable`` stops it: nothing more can go."""
    done, problems = [], []
    for journal in journals:
        try:
            done.append(relog(journal, store))
        except RelogError as exc:
            problems.append(str(exc))
    return done, problems


def journals_under(paths: Iterable[Path]) -> list[Path]:
    """Journals still to replay: each path may be a journal, a record folder, or any folder above them."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif (path / JOURNAL).is_file():
            found.append(path / JOURNAL)
        elif path.is_dir():
            found.extend(sorted(path.rglob(JOURNAL)))
        else:
            raise RelogError(f"{path}: no such file or folder (give a record folder, a journal.jsonl or results/)")
    return found


def journal_has_end(folder: Path) -> bool:
    journal = Path(folder) / JOURNAL
    try:
        return journal.is_file() and any(entry["op"] == "end" for entry in read_journal(journal)[1])
    except RelogError:  # damaged: relog will name it; an extra end entry changes nothing
        return False
