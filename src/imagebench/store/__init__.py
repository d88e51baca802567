"""The MLflow record: where it lives, what each run holds and how it is written.

Experiment = sweep name; one parent run per sweep; one child run per trial.

- ``keys``: the names of every tag and artifact (metric names are ``imagebench.core.metrics``);
- ``paths``: the project root, ``results/<experiment>/`` and the default store;
- ``client``: the MLflow client that retries a busy or briefly absent store for the store patience;
- ``runs``: creating, finding, writing and ending runs;
- ``provenance``: package versions, git commit, who owns a run;
- ``ui``: links into the MLflow UI;
- ``predictions``: a trial's per-image test predictions (``store.predictions``);
- ``record``: a trial's recorder, which journals what the store does not take, and relog.

From outside, import the names below (``from imagebench import store``; ``store.record`` for the
recorder); the submodules are the store's own business.
"""

from imagebench.store.client import (  # noqa: F401
    DEFAULT_STORE_PATIENCE,
    ENV_STORE_PATIENCE,
    FIRST_DELAY,
    LONGEST_DELAY,
    RETRY_MARKERS,
    RetryingClient,
    StoreUnavailable,
    check_store_answers,
    check_store_now,
    client,
    is_transient,
    store_patience,
    using_store,
    with_retries,
)
from imagebench.store.keys import (  # noqa: F401
    ARTIFACT_CLASS_MAP,
    ARTIFACT_CONFUSION_JSON,
    ARTIFACT_CONFUSION_PNG,
    ARTIFACT_CURVES_PNG,
    ARTIFACT_EXPORTS,
    ARTIFACT_NOTEBOOK_DIR,
    ARTIFACT_PREDICTIONS,
    ARTIFACT_REPORT,
    ARTIFACT_SKIPPED,
    CHAMPION_ALIAS,
    EXPERIMENT_KIND,
    LOGGED_MODEL_NAME,
    PARAM_SWEEP_CLAIM,
    TAG_COMMAND,
    TAG_COMPARED_A,
    TAG_COMPARED_B,
    TAG_CONFIG,
    TAG_DATA_SHIPPED,
    TAG_DATASET_FINGERPRINT,
    TAG_EPOCH_BUDGET,
    TAG_ERROR,
    TAG_EXECUTOR,
    TAG_EXPERIMENT_KIND,
    TAG_FEATURE_CACHE,
    TAG_FINGERPRINT,
    TAG_FRAMEWORK,
    TAG_GIT_COMMIT,
    TAG_KERNEL,
    TAG_LEADER,
    TAG_MODEL,
    TAG_NODE,
    TAG_NOTE,
    TAG_NOTEBOOK,
    TAG_OWNER,
    TAG_PARENT,
    TAG_RANK,
    TAG_REGISTERED_EXPERIMENT,
    TAG_RELOGGED,
    TAG_REPRODUCES,
    TAG_REPRODUCTION,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_RUNG,
    TAG_STRATEGY,
    TAG_SWEEP,
    TAG_TRIAL,
    TAG_VERSIONS,
    registered_model_name,
)
from imagebench.store.paths import (  # noqa: F401
    MARKERS,
    default_tracking_uri,
    project_root,
    results_dir,
    runs_dir,
    tracking_uri,
)
from imagebench.store.provenance import (  # noqa: F401
    git_commit,
    owner_is_alive,
    package_versions,
    pinned_requirements,
    process_owner,
)
from imagebench.store.runs import (  # noqa: F401
    RUN_ID_LENGTH,
    RunNotFound,
    find_trial_run,
    create_trial_run,
    end_run,
    experiment_id,
    find_sweep_run,
    log_batch,
    log_batches,
    log_dataset,
    log_metrics,
    log_params,
    now_ms,
    param_text,
    reopen_run,
    run_status,
    search_trial_runs,
    set_tags,
    start_sweep_run,
)
from imagebench.store.ui import (  # noqa: F401
    UI_MODEL_TRAINING_VIEW,
    run_url,
    ui_base_url,
    ui_route,
)
