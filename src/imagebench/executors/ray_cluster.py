"""The Ray executor: the sweep's jobs on the nodes of a Ray cluster (Ray Core; no cluster of our own).

Each slot is a Ray actor (``TrialActor``) that asks Ray for ``--cpus-per-trial`` CPUs and
``--gpus-per-trial`` GPUs, so Ray places it only on a node that has them (and sets
``CUDA_VISIBLE_DEVICES`` for it). Inside, the actor runs the local executor with one worker: the
same papermill worker process and warm kernel as on one machine. No shared filesystem is assumed:
the job's parameters, train.ipynb and a halving checkpoint travel to the node with the job; the
executed notebook, its log, the trial's journal (if the store was down) and the new checkpoint come
back with the result and are written under ``results/<experiment>/runs/`` here, where the sweep
attaches them to the run. The trial itself talks to the tracking server over HTTP.

Faults: a node lost mid-trial ends that job with the node named (the sweep records it FAILED and
goes on with the nodes left); only a node the cluster counts dead is called lost: an exception of
our code in a live actor is reported as itself, and the slot gets a new actor. Ray never retries a
trial by itself (``max_restarts=0``), the next ``imagebench sweep`` does. The actors belong to this driver: if it dies (even ``kill -9``) Ray
kills them, and each actor's worker kills its kernel when its parent goes (``worker``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import ray

from imagebench import store
from imagebench.core.contract import ENV_CACHE, ENV_ROOT, SHARED_WITH_NODES, TRACKING_URI
from imagebench.executors import RESOURCE_PRECISION, Job, JobEnd
from imagebench.executors.local import LocalExecutor
from imagebench.executors.node_storage import (
    SCRATCH_PREFIX,
    clear_places,
    hold_scratch,
    human_size,
    node_cache_base,
    places,
    remove_abandoned_scratch,
)
from imagebench.core.params import ParamsError
from imagebench.executors.worker import error_file, status_file

NAMESPACE = "imagebench"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STOP_GRACE_SECONDS = 30.0  # a stopped job's actor gets this long to return its partial notebook, then is killed
WAIT_NOTE_SECONDS = 30.0  # nothing could be placed for this long: the sweep says what it waits for
# an actor died and its node still counts as alive: Ray's health checks (every 3 s, 5 misses by
# default) may not have noticed a lost node yet, so its death is confirmed for up to this long
NODE_DEATH_SECONDS = 30.0


# --- joining the cluster
def _bootstrap_address(address: str) -> str:
    """host:port of the cluster's head ("auto" resolved the way Ray does), or ``address`` as given."""
    if address.startswith("ray://"):
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address(address) or address
    except Exception:  # no cluster found for "auto": ray.init names it below
        return address


def _probe(address: str) -> None:
    """A head that does not answer is named in seconds, not after Ray's own long connect timeout."""
    if address.startswith("ray://"):
        address = address[len("ray://"):]
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ParamsError(f"the Ray cluster at {address} does not answer ({exc.strerror or exc}): start it with "
                          f"`ray start --head` on that machine or give its address with --address HOST:PORT") from exc  # fmt: skip


def _recorded_address(address: str) -> str:
    """``auto``: the address `ray start` recorded on this machine, as recorded (before Ray rewrites a
    loopback host); any other address as given."""
    if address != "auto":
        return address
    from ray._private.services import get_ray_address_from_environment

    return get_ray_address_from_environment(address, None) or address


def _stay_on_loopback() -> None:
    """A cluster on 127.0.0.1: the driver joins it on 127.0.0.1 and opens no socket off loopback.

    On Linux Ray rewrites 127.0.0.1, both in the address and in ``_node_ip_address``, to this
    machine's interface address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before ray
    was imported. The head (``ray start``) is started with it, as the cluster guide (docs/guides/cluster.md) says; the driver must not
    depend on its user's environment, so the value Ray read from it is set here, for this process."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: Optional[str]) -> str:
    """Join an existing cluster (never start one: a sweep on Ray means the user's cluster)."""
    given = address or "auto"
    loopback = _recorded_address(given).removeprefix("ray://").rpartition(":")[0].strip("[]") in LOOPBACK
    if loopback:
        _stay_on_loopback()
    resolved = _bootstrap_address(given)
    _probe(resolved)
    options: dict[str, Any] = dict(address=resolved, namespace=NAMESPACE, logging_level=logging.ERROR, log_to_driver=False)
    if loopback:  # the driver announces 127.0.0.1 to the cluster, not the machine's interface address
        options["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(**options)
    except Exception as exc:
        raise ParamsError(f"cannot join the Ray cluster at {given} ({type(exc).__name__}: {str(exc).strip()[:300]}); "
                          f"start one with `ray start --head` or pass --address HOST:PORT") from exc  # fmt: skip
    return resolved


def _fits(available: float, asked: float) -> int:
    """How many ``asked`` fit in ``available``, counted in Ray's units of 0.0001 (0.7 / 0.1 is 6.999... in floats)."""
    unit = 10**RESOURCE_PRECISION
    return int(round(available * unit)) // int(round(asked * unit))


def trials_at_once(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many trials asking ``cpus``/``gpus`` (fractions share one unit) the alive nodes hold side by side."""
    total = 0
    for node in nodes:
        resources = node.get("Resources", {})
        fits = _fits(resources.get("CPU", 0), cpus)
        if gpus:
            fits = min(fits, _fits(resources.get("GPU", 0), gpus))
        total += fits
    return total


# TensorFlow takes a whole GPU's memory by default; trials sharing one must each take what they use
SHARED_GPU_ENVIRONMENT = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def trial_environment(base: dict[str, str], gpus: float) -> dict[str, str]:
    """What a trial's kernel gets on the node: ``base``, and memory growth where a GPU is shared (torch
    allocates as it goes already)."""
    return {**base, **(SHARED_GPU_ENVIRONMENT if 0 < gpus < 1 else {})}


def _alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def node_alive(node_id: str, wait: float = NODE_DEATH_SECONDS) -> bool:
    """Whether the cluster still counts the node alive after up to ``wait`` seconds of asking."""
    deadline = time.monotonic() + wait
    while any(node.get("NodeID") == node_id for node in _alive_nodes()):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.5)
    return False


def failure_reason(exc: "ray.exceptions.RayError", node: str, alive: Callable[[], bool]) -> str:
    """Why a job came back without its result, in words a user can act on. Only a node the cluster
    no longer counts alive (``alive()``) is said to be lost: an exception raised by our code in a
    live actor is reported as what it was, and an actor that died on a live node as that."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        return f"{type(cause).__name__} on Ray node {node}: {cause}"
    if not alive():
        return f"Ray node {node} lost while running this trial ({type(exc).__name__}); run the sweep again to retry it"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (f"the Ray actor running this trial on node {node} died ({type(exc).__name__}: {detail}); the node is still "
            f"alive (out of memory? see `ray logs` on it); run the sweep again to retry it")  # fmt: skip


# --- on the node
def node_name() -> str:
    context = ray.get_runtime_context()
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {context.get_node_id()[:8]})"


def dataset_problem(dataset: str, node: str) -> Optional[str]:
    """Why this node cannot run a trial on ``dataset`` (it must be at the same path on every node)."""
    from imagebench.data.folders import BUILTIN_DATASETS

    if dataset in BUILTIN_DATASETS:
        return None
    path = Path(dataset).expanduser()
    if path.is_absolute() and path.is_dir():
        return None
    return (f"dataset {dataset} does not exist on Ray node {node}: every node needs the dataset at the same absolute path "
            f"(copy it there or mount a shared folder), or run the sweep with --ship-data")  # fmt: skip


# --- --ship-data: the dataset decoded once here, sent once to each node that runs a trial on it
@dataclass(frozen=True)
class ShippedDataset:
    """What a job carries of a shipped dataset: the object's ref (in a list, so Ray hands the actor the
    ref and not the bytes: a node fetches them only when it does not have the package yet) and what
    the node checks them against."""

    ref: list
    dataset: str
    size: int
    digest: str
    fingerprint: str
    size_bytes: int


def nodes_lacking(dataset: str) -> list[str]:
    """The alive nodes on which ``dataset`` is no folder (a task pinned to each, asking for no CPU)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(lambda path: (node_name(), Path(path).expanduser().is_dir()))
    answers = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(dataset)
                       for node in _alive_nodes()], timeout=120)  # fmt: skip
    return [name for name, present in answers if not present]


def receive_on_node(shipped: ShippedDataset, expected_fingerprint: str) -> tuple[Path, dict[str, Any]]:
    """The package as a file in this node's cache (fetched and checked the first time), and what that cost."""
    from imagebench.data import shipping
    from imagebench.data.folders import DatasetError

    started = time.monotonic()
    if shipped.fingerprint != expected_fingerprint:
        raise DatasetError(f"the shipped {shipped.dataset} has fingerprint {shipped.fingerprint}, the trial was planned on "
                           f"{expected_fingerprint}: the folder changed during the sweep; run it again")  # fmt: skip
    path = node_cache_base() / shipping.SHIPPED_DIR / shipped.digest
    first = not (path / "meta.json").is_file()
    if first:
        package = shipping.Package(ray.get(shipped.ref[0]), shipped.digest, shipped.fingerprint, shipped.dataset, shipped.size)
        path, first = shipping.receive(package, node_cache_base())
    return path, {"bytes": shipped.size_bytes, "seconds": round(time.monotonic() - started, 3), "first_on_node": first,
                  "node": node_name(), "fingerprint": shipped.fingerprint}  # fmt: skip


def _read(path: Path) -> Optional[bytes]:
    return path.read_bytes() if path.is_file() else None


def job_files(job: Job) -> list[Path]:
    """The files the local executor and its worker write for ``job`` beside its notebook: the
    notebook, its log, the params it was sent, the worker's status and error files, a checkpoint."""
    output = job.output
    files = [output, output.with_suffix(".log"), output.with_suffix(".params.json"), error_file(output), status_file(output)]
    return files + ([job.checkpoint] if job.checkpoint else [])


def remove_job_files(job: Job) -> None:
    """Leave the actor's scratch folder as it was before ``job``: exactly its files and its record
    folder. (Not a glob of ``<label>.*``: for a whole trial that matches the ``<label>.record`` folder.)"""
    for path in job_files(job):
        path.unlink(missing_ok=True)
    shutil.rmtree(job.record_dir, ignore_errors=True)


class TrialActor:
    """One slot on a node: a local executor with one worker (its warm kernel) in a scratch folder."""

    def __init__(self, notebook_text: str, threads: int, fresh_kernel: bool, environment: dict[str, str]):
        self.node = node_name()
        self.node_id = ray.get_runtime_context().get_node_id()
        remove_abandoned_scratch(Path(tempfile.gettempdir()))
        self.folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        self._owner = hold_scratch(self.folder)  # released by the OS however this actor ends
        (self.folder / "notebooks").mkdir()
        (self.folder / "params").mkdir()  # with notebooks/: a project root for the kernel
        (self.folder / "notebooks" / "train.ipynb").write_text(notebook_text, encoding="utf-8")
        self.runs = self.folder / "runs"
        self.runs.mkdir()
        environment = {**environment, ENV_ROOT: str(self.folder)}
        environment.setdefault(ENV_CACHE, str(node_cache_base()))  # the node's own, shared by its actors
        self.executor = LocalExecutor(workers=1, threads=threads, fresh_kernels=fresh_kernel, root=self.folder,
                                      environment=environment, where=self.node)  # fmt: skip
        self.job: Optional[Job] = None

    def where(self) -> tuple[str, str]:
        """The node's name for people and its Ray id (to ask the cluster whether it is still alive)."""
        return self.node, self.node_id

    def run(self, trial, label: str, run_id: str, epoch_budget: Optional[int], checkpoint: Optional[bytes],
            continues: bool, shipped: Optional[ShippedDataset] = None) -> dict[str, Any]:  # fmt: skip
        from imagebench.data.folders import DatasetError

        package, arrival = None, None
        if shipped is not None:
            try:
                package, arrival = receive_on_node(shipped, trial.dataset_fingerprint)
            except DatasetError as exc:  # the trial's data cannot be trusted: it fails, the actor stays
                return {"error": str(exc), "where": self.node}
        else:
            problem = dataset_problem(trial.params.dataset, self.node)
            if problem:
                return {"error": problem, "where": self.node}
        job = Job(trial, lambda: run_id, self.runs / f"{label}.ipynb", epoch_budget,
                  self.runs / f"{trial.name}.pkl" if continues else None, run_id, shipped_data=package)  # fmt: skip
        shutil.rmtree(job.record_dir, ignore_errors=True)  # the sweep keeps the record folder; this is a scratch copy
        if checkpoint is not None:
            job.checkpoint.write_bytes(checkpoint)
        self.job = job
        try:
            self.executor.submit(job)
            _job, end = self.executor.wait()[0]
        finally:
            self.job = None
        result = {
            "error": end.error, "where": self.node, "notebook": _read(job.output), "log": _read(job.output.with_suffix(".log")),
            "checkpoint": _read(job.checkpoint) if job.checkpoint else None,
            "record": {str(path.relative_to(job.record_dir)): path.read_bytes()
                       for path in job.record_dir.rglob("*") if path.is_file()} if job.record_dir.is_dir() else {},
            "data_shipped": arrival,
        }  # fmt: skip
        remove_job_files(job)
        return result

    def progress(self) -> str:
        job = self.job
        return self.executor.progress(job) if job else ""

    def stop(self, reason: str) -> None:
        job = self.job
        if job:
            self.executor.stop(job, reason)

    def shutdown(self) -> None:
        self.executor.close()
        shutil.rmtree(self.folder, ignore_errors=True)


# --- on the driver
@dataclass
class Slot:
    actor: Any = None
    ready: Any = None  # ObjectRef of actor.where(): resolves once Ray has placed the actor
    node: str = ""
    node_id: str = ""
    job: Optional[Job] = None
    result: Any = None
    progress_ref: Any = None
    epoch_text: str = ""
    stop_reason: str = ""
    stopped_at: float = 0.0

    def reset(self) -> None:
        if self.actor is not None:
            ray.kill(self.actor, no_restart=True)
        self.__init__()


def _write(path: Path, data: Optional[bytes]) -> None:
    """Write-then-rename: a sweep killed mid-write never leaves a half file to attach or continue from."""
    if data is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


class RayExecutor:
    def __init__(self, address: Optional[str], workers: Optional[int], cpus_per_trial: float, gpus_per_trial: float,
                 fresh_kernels: bool, ship_data: bool = False):  # fmt: skip
        self.address = connect(address)
        self.cpus, self.gpus, self.fresh_kernels, self.ship_data = cpus_per_trial, gpus_per_trial, fresh_kernels, ship_data
        self._shipped: dict[tuple[str, int], Optional[ShippedDataset]] = {}
        nodes = _alive_nodes()
        capacity = trials_at_once(nodes, self.cpus, self.gpus)
        if capacity == 0:
            ray.shutdown()
            have = ", ".join(f"{n.get('NodeManagerAddress')}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                             for n in nodes)  # fmt: skip
            raise ParamsError(f"no node of the Ray cluster at {self.address} has {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s) for one "
                              f"trial (nodes: {have or 'none'}); lower --cpus-per-trial/--gpus-per-trial or add nodes")  # fmt: skip
        self.nodes, self.capacity = nodes, capacity
        self.slots = workers or capacity
        self.notebook_text = (store.project_root() / "notebooks" / "train.ipynb").read_text(encoding="utf-8")
        self.environment = {name: os.environ[name] for name in SHARED_WITH_NODES if os.environ.get(name)}
        self.environment[TRACKING_URI] = store.tracking_uri()
        self.environment = trial_environment(self.environment, self.gpus)
        self._slots = [Slot() for _ in range(self.slots)]
        self.waiting_since: Optional[float] = None

    @classmethod
    def from_options(cls, options, settings: dict) -> "RayExecutor":
        """``settings``: --address, --cpus-per-trial, --gpus-per-trial, --ship-data (``EXECUTORS``), defaults filled in."""
        return cls(settings["address"], options.workers, settings["cpus_per_trial"], settings["gpus_per_trial"], options.fresh_kernels,
                   settings["ship_data"])  # fmt: skip

    def describe(self) -> list[str]:
        cpus = sum(node["Resources"].get("CPU", 0) for node in self.nodes)
        gpus = sum(node["Resources"].get("GPU", 0) for node in self.nodes)
        lines = [f"ray: cluster {self.address}, {len(self.nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs; {self.slots} trial(s) at "
                 f"once (room for {self.capacity}), each asking {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s)"]  # fmt: skip
        uri = store.tracking_uri()
        if not uri.startswith(("http://", "https://")):
            lines.append(f"ray: note: trials write to {uri}, which only nodes on this machine reach; "
                         f"for other machines run a tracking server (make server) and set MLFLOW_TRACKING_URI")  # fmt: skip
        return lines

    # --- slots
    def _place(self, slot: Slot) -> None:
        actor_class = ray.remote(TrialActor).options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                                     max_task_retries=0, max_concurrency=3)  # fmt: skip
        # framework threads: the whole CPUs asked, at least one (trials sharing a CPU each keep one thread)
        slot.actor = actor_class.remote(self.notebook_text, max(1, int(self.cpus)), self.fresh_kernels, self.environment)
        slot.ready = slot.actor.where.remote()

    def _is_ready(self, slot: Slot) -> bool:
        if slot.actor is None:
            self._place(slot)
        if slot.node:
            return True
        done, _ = ray.wait([slot.ready], timeout=0)
        if not done:
            return False  # Ray has no node with the resources free yet
        try:
            slot.node, slot.node_id = ray.get(done[0])
        except ray.exceptions.RayError:  # its node went away while it started: try again
            slot.reset()
            return False
        return True

    def free_slots(self) -> int:
        free = sum(1 for slot in self._slots if slot.job is None and self._is_ready(slot))
        self._say_when_starved(free)
        return free

    def _say_when_starved(self, free: int) -> None:
        """Nothing running and no slot placed for a while (nodes lost, resources taken): say why once."""
        if free or any(slot.job for slot in self._slots):
            self.waiting_since = None
            return
        now = time.monotonic()
        self.waiting_since = self.waiting_since or now
        if now - self.waiting_since > WAIT_NOTE_SECONDS:
            nodes = ", ".join(f"{n.get('NodeManagerAddress')}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                              for n in _alive_nodes())  # fmt: skip
            print(f"ray: waiting for a node with {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s) free for the next trial "
                  f"(alive: {nodes or 'none'}); add a node or stop with Ctrl-C (the sweep resumes where it stopped)", flush=True)  # fmt: skip
            self.waiting_since = now + 10 * WAIT_NOTE_SECONDS  # then again only every few minutes

    def _shipped_dataset(self, params) -> Optional[ShippedDataset]:
        """The dataset shipped for this (dataset, image size), put in the object store once: always
        with --ship-data, else when a node lacks the folder; None for built-in datasets."""
        from imagebench.data.folders import BUILTIN_DATASETS

        key = (params.dataset, params.image_size)
        if params.dataset in BUILTIN_DATASETS:
            return None
        if key not in self._shipped:
            lacking = [] if self.ship_data else nodes_lacking(params.dataset)
            self._shipped[key] = self._ship(*key, lacking) if self.ship_data or lacking else None
        return self._shipped[key]

    def _ship(self, dataset: str, size: int, lacking: list[str]) -> Optional[ShippedDataset]:
        """None when this machine cannot read the folder either (gone since the data check): each
        trial on it then fails on its node, naming node and path, and the sweep goes on."""
        from imagebench.data.folders import DatasetError

        try:
            return self._pack_and_put(dataset, size, lacking)
        except DatasetError as exc:
            print(f"ray: cannot ship {dataset} at {size} px ({exc}); its trials run on nodes as they are", flush=True)
            return None

    def _pack_and_put(self, dataset: str, size: int, lacking: list[str]) -> ShippedDataset:
        from imagebench.data import shipping

        started = time.monotonic()
        package = shipping.pack_folder(dataset, size)
        shipped = ShippedDataset([ray.put(package.data)], dataset, size, package.digest, package.fingerprint, len(package.data))
        why = f"missing on {len(lacking)} node(s): {', '.join(lacking)}" if lacking else "--ship-data"
        print(f"ray: shipping {dataset} at {size} px to the nodes ({why}): {human_size(len(package.data))} compressed, "
              f"packed in {time.monotonic() - started:.1f} s; each node fetches it once", flush=True)  # fmt: skip
        return shipped

    def submit(self, job: Job) -> None:
        slot = next(slot for slot in self._slots if slot.job is None and slot.node)
        continues = job.checkpoint is not None
        checkpoint = job.checkpoint.read_bytes() if continues and job.checkpoint.is_file() else None
        shipped = self._shipped_dataset(job.trial.params)
        slot.job, slot.epoch_text, slot.stop_reason = job, "starting", ""
        slot.result = slot.actor.run.remote(job.trial, job.label, job.run_id, job.epoch_budget, checkpoint, continues, shipped)

    def _slot_of(self, job: Job) -> Optional[Slot]:
        return next((slot for slot in self._slots if slot.job is job), None)

    def finished(self) -> list[tuple[Job, JobEnd]]:
        ended = []
        for slot in self._slots:
            if slot.job is None:
                continue
            if slot.stop_reason and time.monotonic() - slot.stopped_at > STOP_GRACE_SECONDS:
                ray.kill(slot.actor, no_restart=True)  # it did not stop in time: its partial notebook is lost
            done, _ = ray.wait([slot.result], timeout=0)
            if done:
                ended.append((slot.job, self._collect(slot)))
        return ended

    def _collect(self, slot: Slot) -> JobEnd:
        job = slot.job
        try:
            result = ray.get(slot.result)
        except ray.exceptions.RayError as exc:
            end = JobEnd(slot.stop_reason or failure_reason(exc, slot.node, lambda: node_alive(slot.node_id)), slot.node)
            self._retire(slot, alive=isinstance(exc, ray.exceptions.RayTaskError))
            return end
        _write(job.output, result.get("notebook"))
        _write(job.output.with_suffix(".log"), result.get("log"))
        for relative, data in result.get("record", {}).items():
            _write(job.record_dir / relative, data)
        if job.checkpoint is not None:
            _write(job.checkpoint, result.get("checkpoint"))
        if result.get("data_shipped"):  # the run says its data came with it, and what that cost
            store.set_tags(job.run_id, {store.TAG_DATA_SHIPPED: json.dumps(result["data_shipped"])})
        slot.job, slot.result, slot.progress_ref = None, None, None
        return JobEnd(slot.stop_reason or result["error"], result["where"])

    @staticmethod
    def _retire(slot: Slot, alive: bool) -> None:
        """A slot whose job ended without a result gets a new actor (placed where Ray has room). One
        that raised is alive but in an unknown state: it removes its scratch folder before it is killed."""
        if alive:
            try:
                ray.get(slot.actor.shutdown.remote(), timeout=STOP_GRACE_SECONDS)
            except ray.exceptions.RayError:
                pass  # it died meanwhile: the kill below is all that is left to do
        slot.reset()

    def progress(self, job: Job) -> str:
        slot = self._slot_of(job)
        if slot is None:
            return ""
        if slot.progress_ref is not None and ray.wait([slot.progress_ref], timeout=0)[0]:
            try:
                slot.epoch_text = ray.get(slot.progress_ref) or slot.epoch_text
            except ray.exceptions.RayError:
                pass
            slot.progress_ref = None
        if slot.progress_ref is None:
            slot.progress_ref = slot.actor.progress.remote()
        return slot.epoch_text

    def stop(self, job: Job, reason: str) -> None:
        slot = self._slot_of(job)
        if slot is not None and not slot.stop_reason:
            slot.stop_reason, slot.stopped_at = reason, time.monotonic()
            slot.actor.stop.remote(reason)

    def stop_all(self, reason: str) -> list[tuple[Job, JobEnd]]:
        running = [slot for slot in self._slots if slot.job is not None]
        for slot in running:
            self.stop(slot.job, reason)
        ray.wait([slot.result for slot in running], num_returns=len(running), timeout=15) if running else None
        for slot in running:
            if not ray.wait([slot.result], timeout=0)[0]:
                ray.kill(slot.actor, no_restart=True)
        return [(slot.job, self._collect(slot)) for slot in running]

    def close(self) -> None:
        idle = [slot for slot in self._slots if slot.actor is not None and slot.node and slot.job is None]
        try:
            ray.wait([slot.actor.shutdown.remote() for slot in idle], num_returns=len(idle), timeout=30) if idle else None
        except ray.exceptions.RayError:
            pass
        for slot in self._slots:
            if slot.actor is not None:
                ray.kill(slot.actor, no_restart=True)
        ray.shutdown()


# --- what the nodes keep (``imagebench cache --address``)
def _storage_of_this_node(clear: bool) -> tuple[str, list]:
    return node_name(), clear_places(with_project=False) if clear else places(with_project=False)


def storage_on_nodes(address: Optional[str], clear: bool) -> list[tuple[str, list]]:
    """(node, its ``node_storage.Place`` list) for every alive node of the cluster, each looked at (or
    cleared) by a task pinned to that node; 0 CPUs asked, so busy nodes answer too."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    connect(address)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_storage_of_this_node)
        answers = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(clear)
                   for node in _alive_nodes()]  # fmt: skip
        return ray.get(answers, timeout=120)
    finally:
        ray.shutdown()
