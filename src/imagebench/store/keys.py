"""Names of the tags and artifacts every run carries; metric names are ``imagebench.core.metrics``.

All tag and artifact names are defined here and nowhere else.
"""

from __future__ import annotations

from imagebench.core import names

TAG_ROLE = "imagebench.role"  # "sweep" (parent) or "trial" (child)
TAG_SWEEP = "imagebench.sweep"
TAG_TRIAL = "imagebench.trial"
TAG_MODEL = "imagebench.model"
TAG_FRAMEWORK = "imagebench.framework"
TAG_FINGERPRINT = "imagebench.fingerprint"
TAG_DATASET_FINGERPRINT = "imagebench.dataset_fingerprint"
TAG_GIT_COMMIT = "imagebench.git_commit"
TAG_VERSIONS = "imagebench.versions"
TAG_ERROR = "imagebench.error"
TAG_NOTEBOOK = "imagebench.notebook"
TAG_EPOCH_BUDGET = "imagebench.epoch_budget"  # epochs the trial has been trained up to (halving: per rung)
TAG_OWNER = "imagebench.owner"  # host:pid of the process that drives the run (finds runs left RUNNING)
TAG_STRATEGY = "imagebench.strategy"
TAG_EXECUTOR = "imagebench.executor"  # where the sweep ran its trials: local | ray
TAG_RUNG = "imagebench.rung"
TAG_FEATURE_CACHE = "imagebench.feature_cache"  # "hit" / "computed" when the head trained on cached features
TAG_KERNEL = "imagebench.kernel"  # host:pid of the process that trained it (a sweep's warm kernel serves several)
TAG_NODE = "imagebench.node"  # where the executor ran the trial (a Ray node: host, address and node id)
TAG_DATA_SHIPPED = "imagebench.data_shipped"  # --ship-data: the dataset came with the job (JSON: bytes, seconds, first on its node)
TAG_CONFIG = "imagebench.config"  # fingerprint without the seed: repeats of one configuration share it
TAG_REPRODUCES = "imagebench.reproduces"  # on a reproduction (role "reproduction"): the run it ran again
TAG_REPRODUCTION = "imagebench.reproduction"  # its verdict: identical | within tolerance | different
TAG_COMPARED_A = "imagebench.compared_a"  # on a comparison (role "comparison"): sweep A (its parent run id, else its experiment)
TAG_COMPARED_B = "imagebench.compared_b"  # and sweep B
TAG_RELOGGED = "imagebench.relogged"  # the record was replayed from a local journal (store was down)
TAG_LEADER = "imagebench.leader"  # "true" on each leaderboard row's run: one UI search shows the leaderboard
TAG_RANK = "imagebench.rank"  # its rank on the leaderboard (1 = the winner on validation)
TAG_COMMAND = "imagebench.command"  # on the parent run: the command that reproduces the sweep
PARAM_SWEEP_CLAIM = "imagebench.sweep_claim"  # on the parent run, ".N" = host:pid of the Nth sweep that drove it (params never change: one winner per N)
TAG_NOTE = "mlflow.note.content"  # a run's description, shown on its overview page in the UI
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens "custom_model_development" on the runs table
EXPERIMENT_KIND = "custom_model_development"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
ARTIFACT_CONFUSION_PNG = "confusion_matrix.png"
ARTIFACT_CONFUSION_JSON = "confusion_matrix.json"
ARTIFACT_CURVES_PNG = "learning_curves.png"
ARTIFACT_REPORT = "classification_report.txt"
ARTIFACT_CLASS_MAP = "class_map.json"
ARTIFACT_SKIPPED = "skipped_files.txt"
ARTIFACT_PREDICTIONS = "test_predictions.npz"  # every test image's label, prediction and probabilities (store.predictions)
ARTIFACT_NOTEBOOK_DIR = "notebook"
ARTIFACT_EXPORTS = "exports"  # a leader's portable files (ONNX, .keras / .pt2) and the checks they passed
LOGGED_MODEL_NAME = "model"  # a leader's MLflow model (its own flavour), in the run's Models column
CHAMPION_ALIAS = "champion"  # registry alias of the experiment's overall winner
TAG_REGISTERED_EXPERIMENT = "imagebench.experiment"  # on each registered model: the sweep it came from


def registered_model_name(experiment: str, model: str, framework: str) -> str:
    """One registered model per experiment, model and framework; each publication of a leader is a version.
    Every part follows ``names.NAME_RULE`` (a registry on a file store keeps the name as a folder)."""
    parts = [names.safe_name(value, what) for value, what in ((experiment, "experiment"), (framework, "framework"), (model, "model"))]
    return ".".join(parts)
