"""One trial: params → data → model → fit (best weights) → test → MLflow child run → result."""

from __future__ import annotations

import json
import os
import pickle
import platform
import sys
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from imagebench.training import features
from imagebench.core import plots
from imagebench import store
from imagebench.core import metrics
from imagebench.trial import trained
from imagebench.trial.ledger import TRAINING, CostLedger
from imagebench.backends import get_backend, get_exporter
from imagebench.data.arrays import TrialData
from imagebench.data.load import load_trial_data
from imagebench.training.evaluation import Evaluation, evaluate
from imagebench.trial.fingerprint import config_fingerprint, trial_fingerprint
from imagebench.training.monitor import EpochMonitor, EpochRecord
from imagebench.core.params import TrialParams, make_params
from imagebench.store import predictions
from imagebench.store.record import RunRecorder, bytes_file, json_file, record_folder, text_file
from imagebench.training.weights import require_weights

PREDICT_BATCH = 256
# How the sweep runs a trial (not what the trial is, so not parameters): halving gives a rung an
# epoch budget and a checkpoint file to continue from and save to.
from imagebench.core.contract import ENV_CHECKPOINT, ENV_EPOCH_BUDGET, ENV_RECORD_DIR, ENV_RUN_ID, progress_line  # noqa: E402


@dataclass
class TrialResult:
    run_id: str
    params: TrialParams
    metrics: dict[str, float]
    history: list[EpochRecord]
    class_names: list[str]
    confusion: np.ndarray
    report: str
    split_sizes: dict[str, int] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # artifact name -> PNG, drawn once for the record

    @property
    def curves(self) -> dict[str, list[float]]:
        return {key: [record.as_metrics()[key] for record in self.history] for key in metrics.EPOCH_METRICS}

    def _curves_arguments(self) -> tuple:
        title = f"{self.params.framework} / {self.params.model}"
        return self.curves, title, int(self.metrics.get(metrics.BEST_EPOCH.key, 0))

    def _confusion_arguments(self) -> tuple:
        return self.confusion, self.class_names, f"test confusion matrix ({self.params.model})"

    def learning_curves_figure(self):
        return plots.learning_curves(*self._curves_arguments())

    def confusion_figure(self):
        return plots.confusion_matrix(*self._confusion_arguments())

    def draw_figures(self) -> dict[str, bytes]:
        """Learning curves, then the confusion matrix, as the PNGs the run's record keeps (the same
        images as ``*_figure()``, drawn on figures this process keeps from one trial to the next)."""
        self.figures = {
            store.ARTIFACT_CURVES_PNG: plots.learning_curves_png(*self._curves_arguments()),
            store.ARTIFACT_CONFUSION_PNG: plots.confusion_matrix_png(*self._confusion_arguments()),
        }
        return self.figures

    def images(self) -> list:
        """The record's figures for a notebook to display: the same PNGs, not drawn again (drawing
        them costs more than a short trial's epoch; ``*_figure()`` give the matplotlib figures)."""
        from IPython.display import Image

        return [Image(data=png, format="png") for png in (self.figures or self.draw_figures()).values()]

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "model": self.params.model, "framework": self.params.framework, **self.metrics}


@lru_cache(maxsize=None)  # read from package metadata: ~10 ms per trial, and fixed for a process
def environment_versions(framework: str) -> str:
    """The versions tag: Python and the packages that decide a trial's numbers (JSON)."""
    names = ["imagebench", "mlflow", "scikit-learn"] + (["tensorflow-cpu", "tensorflow", "keras"] if framework == "keras" else ["torch", "timm"])
    return json.dumps({"python": platform.python_version(), **store.package_versions(names)})


def trial_tags(params: TrialParams, dataset_fingerprint: str) -> dict[str, str]:
    return {
        store.TAG_MODEL: params.model,
        store.TAG_FRAMEWORK: params.framework,
        store.TAG_FINGERPRINT: trial_fingerprint(params, dataset_fingerprint),
        store.TAG_CONFIG: config_fingerprint(params, dataset_fingerprint),
        store.TAG_DATASET_FINGERPRINT: dataset_fingerprint,
    }


def _epoch_reporter(recorder: RunRecorder, params: TrialParams, verbose: bool):
    def report(record: EpochRecord) -> None:
        recorder.log_epoch_metrics(record.as_metrics(), step=record.epoch)
        if verbose:  # the sweep's display reads these lines back (contract.last_progress)
            print(progress_line(record.epoch, params.epochs, record.train_loss, record.train_accuracy, record.val_loss,
                                record.val_accuracy, record.lr, record.seconds), flush=True)  # fmt: skip

    return report


def _data_files(data: TrialData) -> dict[str, Any]:
    """The data's artifacts (class map, skipped files), uploaded with the trial's results (one write)."""
    files = {store.ARTIFACT_CLASS_MAP: json_file(data.class_map())}
    if data.skipped_files:
        files[store.ARTIFACT_SKIPPED] = text_file("\n".join(data.skipped_files))
    return files


def _log_data(recorder: RunRecorder, params: TrialParams, data: TrialData) -> None:
    sizes = {f"data/{split}_images": count for split, count in data.split_sizes().items()}
    recorder.log_batch(metrics={**sizes, "data/classes": data.num_classes, "data/skipped_files": len(data.skipped_files)},
                       tags={**trial_tags(params, data.fingerprint), "imagebench.dataset_source": data.source})  # fmt: skip
    recorder.log_dataset(Path(data.source).name if data.source.startswith("/") else data.source, data.fingerprint, data.source,
                         {"splits": data.split_sizes(), "classes": data.num_classes, "image_size": params.image_size})  # fmt: skip


def _log_results(recorder: RunRecorder, result: TrialResult, evaluation: Evaluation, tested: predictions.TestPredictions,
                 tags: dict[str, Any], ledger: CostLedger, data_files: dict[str, Any]) -> None:
    # at the last epoch's step: a continued trial (halving) shows its final metrics per rung
    recorder.log_batch(metrics=result.metrics, step=len(result.history), tags=tags)
    with ledger.phase(metrics.FIGURES_SECONDS.key):
        figures = result.draw_figures()
    files = {**data_files, store.ARTIFACT_REPORT: text_file(evaluation.report),
             store.ARTIFACT_CONFUSION_JSON: json_file({"labels": result.class_names, "matrix": evaluation.confusion.tolist()}),
             store.ARTIFACT_PREDICTIONS: bytes_file(predictions.to_bytes(tested))}
    recorder.log_files({**files, **{name: bytes_file(png) for name, png in figures.items()}})


def _open_run(params: TrialParams, run_id: Optional[str]) -> RunRecorder:
    """Fill the run the sweep created (``$IMAGEBENCH_RUN_ID``) or start a standalone one.

    A store that is down before the run exists fails the trial at once: nothing has been computed yet.
    """
    run_id = run_id or os.environ.get(ENV_RUN_ID)
    name = run_id
    if not run_id:
        # Tags that need the data are set once it loads, so a bad dataset still leaves a FAILED run.
        # the name also names the run's record folder (kept model, journal): unique even for two
        # trials started in the same second (a head on cached features takes about one)
        name = f"{params.framework}-{params.model}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        tags = {store.TAG_MODEL: params.model, store.TAG_FRAMEWORK: params.framework}
        run_id = store.create_trial_run(params.experiment, name, tags, None)  # owned by this kernel
    recorder = RunRecorder(run_id, record_folder(params.experiment, name))
    # Under a sweep these ride with the data's batch (one round trip fewer): if the kernel dies first,
    # the sweep sends them from the record folder. A trial on its own has nobody to do that.
    log = recorder.log_batch_later if os.environ.get(ENV_RECORD_DIR) else recorder.log_batch
    log(params=params.tracked(), tags={store.TAG_VERSIONS: environment_versions(params.framework), store.TAG_KERNEL: store.process_owner()})
    return recorder


def _env_budget() -> Optional[int]:
    value = os.environ.get(ENV_EPOCH_BUDGET, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _load_checkpoint(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None or not path.is_file():
        return None
    with path.open("rb") as handle:
        return pickle.load(handle)  # written by _save_checkpoint of this package, never user input


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write-then-rename: a trial killed mid-write never leaves a half checkpoint to continue from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, path)


def _fit(backend, model, params: TrialParams, data: TrialData, monitor: EpochMonitor,
         epoch_budget: Optional[int], checkpoint: Optional[Path], ledger: CostLedger) -> float:
    """Train (continuing from ``checkpoint`` if it exists); return the trial's total training seconds."""
    saved = None
    if checkpoint is not None:
        with ledger.phase(metrics.CHECKPOINT_SECONDS.key):
            saved = _load_checkpoint(checkpoint)
    if saved is not None:
        monitor.load_state(saved["monitor"])
    started = time.perf_counter()
    with ledger.phase(TRAINING):
        state = backend.fit(model, params, data, monitor, epoch_budget, saved["backend"] if saved else None)
    train_seconds = time.perf_counter() - started + (saved["train_seconds"] if saved else 0.0)
    if checkpoint is not None:
        with ledger.phase(metrics.CHECKPOINT_SECONDS.key):
            _save_checkpoint(checkpoint, {"monitor": monitor.state(), "backend": state, "train_seconds": train_seconds})
    return train_seconds


@dataclass
class _Models:
    """What a trial trains and reports on: the whole model, or (frozen backbone, feature cache) a
    head on cached features, with the whole model built only when the features were computed."""

    whole: Any  # None on a feature-cache hit
    fit: Any
    data: TrialData
    cached: Optional[features.Features] = None

    def param_counts(self, backend) -> tuple[int, int]:
        """(total, trainable) of the whole model; on cached features the backbone's total, counted
        with them, plus this head's (the backbone is frozen: only the head trains)."""
        if self.cached is None:
            return backend.count_params(self.whole)
        total, trainable = backend.count_params(self.fit)
        return self.cached.backbone_params + total, trainable

    def flops(self, backend, params: TrialParams) -> int:
        if self.cached is None:
            return backend.count_flops(self.whole, params)
        return self.cached.backbone_flops + backend.count_head_flops(self.fit, self.cached.width)

    def latency_ms(self, backend) -> float:
        """One image through the whole model; on cached features the backbone's latency, measured
        with them, plus this head's on one feature vector."""
        if self.cached is None:
            return backend.latency_ms(self.whole, self.data.test.images[:1])
        return self.cached.backbone_latency_ms + backend.latency_ms(self.fit, np.array(self.data.test.images[:1]))

    def kept(self) -> tuple[Any, Optional[Path]]:
        """What the trial keeps (``trained.save``): the whole model, or the head and the cache entry's
        backbone weights."""
        weights = self.cached.backbone_weights if self.cached is not None else None
        return (self.whole, None) if weights is None else (self.fit, weights)


def _models(recorder: RunRecorder, backend, params: TrialParams, data: TrialData, verbose: bool) -> _Models:
    if not features.applies(params):
        model = backend.build_model(params, data.num_classes)
        return _Models(model, model, data)
    cached = features.feature_data(backend, get_exporter(params.framework), params, data)
    head = backend.head_model(cached.model) if cached.model is not None else backend.build_head(params, data.num_classes, cached.width)
    recorder.set_tags({store.TAG_FEATURE_CACHE: "hit" if cached.hit else "computed"})
    if verbose:
        print(f"frozen backbone: head trained on {'cached' if cached.hit else 'newly computed'} pooled features")
    return _Models(cached.model, head, cached.data, cached)


def _train_and_test(recorder: RunRecorder, params: TrialParams, verbose: bool, ledger: CostLedger,
                    epoch_budget: Optional[int] = None, checkpoint: Optional[Path] = None) -> TrialResult:
    with ledger.phase(metrics.DATA_SECONDS.key):
        require_weights([params])  # a clear error instead of a download attempt with no network
        data = load_trial_data(params)
        _log_data(recorder, params, data)
    with ledger.phase(metrics.MODEL_BUILD_SECONDS.key):  # a kernel's first trial: + the framework's import
        backend = get_backend(params.framework)
        backend.configure(params)
        models = _models(recorder, backend, params, data, verbose)
        total_params, trainable_params = models.param_counts(backend)
    if verbose:
        print(f"{params.framework}/{params.model}: {total_params:,} params ({trainable_params:,} trainable); data {data.split_sizes()}")
    monitor = EpochMonitor(params, on_epoch=_epoch_reporter(recorder, params, verbose))
    fit_model, fit_data = models.fit, models.data
    train_seconds = _fit(backend, fit_model, params, fit_data, monitor, epoch_budget, checkpoint, ledger)
    with ledger.phase(metrics.TEST_EVAL_SECONDS.key):
        # val-best weights, restored by fit; on cached features when the backbone is frozen (the same numbers)
        probabilities = backend.predict_proba(fit_model, fit_data.test.images, PREDICT_BATCH)
        evaluation = evaluate(probabilities, data.test.labels, data.class_names)
        tested = predictions.from_trial(data.test.images, data.test.labels, probabilities, data.class_names)
    with ledger.phase(metrics.LATENCY_SECONDS.key):
        latency_ms = models.latency_ms(backend)
        flops = models.flops(backend, params)  # after latency: Keras counts on the graph the latency traced (no new trace)
    final = {
        **evaluation.metrics,
        metrics.BEST_EPOCH.key: monitor.best_epoch,
        metrics.BEST_VAL_ACCURACY.key: monitor.best.val_accuracy,
        metrics.BEST_VAL_LOSS.key: monitor.best.val_loss,
        metrics.EPOCHS_RUN.key: len(monitor.history),
        metrics.PARAMS.key: total_params,
        metrics.TRAINABLE_PARAMS.key: trainable_params,
        metrics.TRAIN_SECONDS.key: train_seconds,
        metrics.LATENCY_MS.key: latency_ms,
        metrics.FLOPS.key: flops,
    }
    result = TrialResult(
        recorder.run_id, params, final, monitor.history, data.class_names, evaluation.confusion, evaluation.report, data.split_sizes()
    )
    _log_results(recorder, result, evaluation, tested, {store.TAG_EPOCH_BUDGET: monitor.last_epoch(epoch_budget)}, ledger,
                 _data_files(data))
    with ledger.phase(metrics.WEIGHTS_SAVE_SECONDS.key):
        # kept until the sweep knows the leaders (publish): the whole model, or the head and the cached backbone
        kept, backbone_weights = models.kept()
        trained.save(recorder.folder, get_exporter(params.framework), kept, params, recorder.run_id, data.class_names,
                     probabilities, backbone_weights)  # fmt: skip
    return result


def _end(recorder: RunRecorder, ledger: CostLedger, status: str, error: Optional[str] = None) -> None:
    """End the run, first recording its cost ledger (the store writes' part shows a loaded server)."""
    recorder.log_batch(metrics=ledger.totals())
    recorder.end(status, error)


def run_trial(
    params: TrialParams | dict[str, Any],
    run_id: Optional[str] = None,
    verbose: bool = True,
    epoch_budget: Optional[int] = None,
    checkpoint: Optional[str | Path] = None,
) -> TrialResult:
    """Run one trial and record it in MLflow; the run ends FINISHED, FAILED (error tagged) or KILLED.

    If the store stays down during the trial, the trial trains to its end with the rest of its
    record kept in a local journal, then raises ``StoreUnavailable`` naming it (see ``record``).

    ``epoch_budget`` and ``checkpoint`` (default: ``$IMAGEBENCH_EPOCH_BUDGET``, ``$IMAGEBENCH_CHECKPOINT``)
    let successive halving train a trial in rungs: each call continues from the checkpoint, trains
    up to the budget, and saves the state for the next rung.
    """
    params = params if isinstance(params, TrialParams) else make_params(params)
    epoch_budget = epoch_budget or _env_budget()
    checkpoint = checkpoint or os.environ.get(ENV_CHECKPOINT) or None
    checkpoint = Path(checkpoint) if checkpoint else None
    ledger = CostLedger()
    with ledger.phase(metrics.STORE_SECONDS.key):  # a trial on its own creates its run (a kernel's first: + connecting)
        recorder = ledger.recorder = _open_run(params, run_id)
    if checkpoint is not None and checkpoint.is_file():  # a later rung: its ledger adds to the earlier rungs'
        ledger.earlier = recorder.recorded_metrics(metrics.TRIAL_COSTS)
    try:
        result = _train_and_test(recorder, params, verbose, ledger, epoch_budget, checkpoint)
    except KeyboardInterrupt:
        _end(recorder, ledger, "KILLED", "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        _end(recorder, ledger, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    _end(recorder, ledger, "FINISHED")
    if verbose:
        shown = {key: round(value, 4) for key, value in result.metrics.items() if key.startswith(("test/", "best"))}
        print(f"finished run {recorder.run_id}: {shown}", file=sys.stdout, flush=True)
    if recorder.offline:
        raise recorder.unavailable()
    return result
