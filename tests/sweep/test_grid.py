import re
import textwrap

import pytest

from imagebench.sweep.grid import expand, plan_sweep
from imagebench.core.params import ParamsError


def _write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_matrix_product_exclude_include():
    content = {
        "matrix": {"framework": ["keras", "torch"], "model": ["cnn", "vgg16"], "learning_rate": [0.1, 0.01]},
        "exclude": [{"framework": "torch", "model": "vgg16"}, {"learning_rate": 0.1, "model": ["cnn"]}],
        "include": [{"framework": "keras", "model": "resnet50", "learning_rate": 0.5}],
    }
    trials = expand(content)
    assert len(trials) == 2 * 2 * 2 - 2 - 2 + 1  # two torch-vgg16 and two lr-0.1-cnn combos dropped (one overlap)
    assert {"framework": "torch", "model": "vgg16", "learning_rate": 0.01} not in trials
    assert not any(t["model"] == "cnn" and t["learning_rate"] == 0.1 for t in trials)
    assert trials[-1] == {"framework": "keras", "model": "resnet50", "learning_rate": 0.5}


def test_demo_plan_has_all_models_in_both_frameworks(tmp_path):
    from helpers import REPO

    plan = plan_sweep(REPO / "params" / "demo.yaml")
    pairs = {(t.params.framework, t.params.model) for t in plan.trials}
    assert len(plan.trials) == 16 and len(pairs) == 16
    assert plan.experiment == "demo"
    assert len({t.name for t in plan.trials}) == 16


def test_models_and_frameworks_options_also_drop_the_include_entries_of_others():
    from helpers import REPO

    full = {t.fingerprint for t in plan_sweep(REPO / "params" / "demo.yaml").trials}
    only_cnn = plan_sweep(REPO / "params" / "demo.yaml", axes={"model": ["cnn"]}).trials
    assert sorted((t.params.framework, t.params.model) for t in only_cnn) == [("keras", "cnn"), ("torch", "cnn")]
    torch_vgg = plan_sweep(REPO / "params" / "demo.yaml", axes={"model": ["vgg16"], "framework": ["torch"]}).trials
    assert sorted(t.params.learning_rate for t in torch_vgg) == [0.0001, 0.001]  # the include entry's rate kept
    assert {t.fingerprint for t in only_cnn} <= full  # the same trials as in the whole sweep (resume finds them)


def test_overrides_apply_to_every_trial_and_change_fingerprints(tmp_path):
    path = _write(tmp_path, """
        experiment: t
        base: {image_size: 32}
        matrix: {model: [cnn, cnn_attention]}
    """)
    plain = plan_sweep(path)
    overridden = plan_sweep(path, {"epochs": 3})
    assert all(t.params.epochs == 3 for t in overridden.trials)
    assert {t.fingerprint for t in plain.trials}.isdisjoint({t.fingerprint for t in overridden.trials})


def test_fingerprint_ignores_spelling_but_not_values(tmp_path):
    a = _write(tmp_path, "base: {learning_rate: 0.001, image_size: 32}\nmatrix: {model: [cnn]}\n")
    first = plan_sweep(a).trials[0].fingerprint
    b = _write(tmp_path, "matrix: {model: [cnn]}\nbase: {image_size: 32.0, learning_rate: 1.0e-3}\n")
    assert plan_sweep(b).trials[0].fingerprint == first
    c = _write(tmp_path, "base: {learning_rate: 0.002, image_size: 32}\nmatrix: {model: [cnn]}\n")
    assert plan_sweep(c).trials[0].fingerprint != first


def test_fingerprint_normalises_dataset_paths(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        (data / name / "x.png").write_bytes(b"not really")
    monkeypatch.chdir(tmp_path)
    relative = plan_sweep(_write(tmp_path, "base: {dataset: ./data}\nmatrix: {model: [cnn]}\n")).trials[0]
    absolute = plan_sweep(_write(tmp_path, f"base: {{dataset: '{data}'}}\nmatrix: {{model: [cnn]}}\n")).trials[0]
    assert relative.fingerprint == absolute.fingerprint


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("matrix: {learning_rat: [0.1]}\n", "did you mean 'learning_rate'"),
        ("base: {optimizer: adm}\nmatrix: {model: [cnn]}\n", "'optimizer' = 'adm'"),
        ("matrix: {model: [cnn]}\nexclude: [{model: cnn}]\n", "expands to no trials"),
        ("matrx: {model: [cnn]}\n", "unknown top-level key"),
        ("matrix: {model: []}\n", "axis 'model' is empty"),
    ],
)
def test_bad_sweep_files_fail_before_anything_runs(tmp_path, text, fragment):
    with pytest.raises(ParamsError, match=fragment):
        plan_sweep(_write(tmp_path, text))


def test_grid52_is_52_trials_per_model_and_framework_with_the_product_best():
    from helpers import REPO

    plan = plan_sweep(REPO / "params" / "grid52.yaml", axes={"model": ["cnn", "efficientnet_b0"]})
    assert plan.counts()["trials"].tolist() == [52, 52, 52, 52]
    best = [
        t for t in plan.trials
        if (t.params.optimizer, t.params.learning_rate, t.params.l2, t.params.batch_size) == ("rmsprop", 0.007, 0.005, 64)
    ]
    assert len(best) == 4  # per model and framework
    assert all(t.params.epochs == 50 and t.params.early_stopping_patience == 5 and t.params.activation == "relu"
               and t.params.head_units == [512, 256, 128, 64] for t in best)
    assert not any(t.params.optimizer == "adamw" and t.params.l2 > 0 for t in plan.trials)
    assert all((t.params.weight_decay > 0) == (t.params.optimizer == "adamw") for t in plan.trials)


def test_command_line_axes_replace_the_files_choice(tmp_path):
    path = _write(tmp_path, "base: {model: vgg16}\nmatrix: {framework: [keras, torch], learning_rate: [0.1, 0.01]}\n")
    plan = plan_sweep(path, axes={"model": ["cnn"], "framework": ["torch"]})
    assert {(t.params.model, t.params.framework) for t in plan.trials} == {("cnn", "torch")} and len(plan.trials) == 2


def test_config_fingerprint_ignores_the_seed_only(tmp_path):
    from imagebench.trial.fingerprint import config_fingerprint, trial_fingerprint
    from imagebench.core.params import make_params

    base = make_params(learning_rate=0.01)
    other_seed = make_params(learning_rate=0.01, seed=7)
    other_rate = make_params(learning_rate=0.02)
    assert config_fingerprint(base, "d") == config_fingerprint(other_seed, "d")
    assert trial_fingerprint(base, "d") != trial_fingerprint(other_seed, "d")
    assert config_fingerprint(base, "d") != config_fingerprint(other_rate, "d")
    assert config_fingerprint(base, "d") != config_fingerprint(base, "other data")


def test_speed_switches_at_their_defaults_keep_recorded_fingerprints():
    from imagebench.trial.fingerprint import trial_fingerprint
    from imagebench.core.params import make_params

    # values recorded before the switches existed: finished trials must not re-run after an upgrade
    assert trial_fingerprint(make_params(), "d") == "3128bcfd51df2ba5"
    torch_trial = make_params(framework="torch", model="resnet50", learning_rate=0.007)
    assert trial_fingerprint(torch_trial, "d") == "fb3a759b49c84d3a"
    for switch in ("mixed_precision", "channels_last", "compile"):
        assert trial_fingerprint(make_params(**{switch: True}), "d") != "3128bcfd51df2ba5", switch


# --- malformed sweep files through the command line (issue 20): exit 2, the key named, no traceback
@pytest.mark.parametrize(
    "text, message",
    [
        ("", "sweep.yaml: the sweep file is empty"),
        ("---\n", "sweep.yaml: the sweep file is empty"),
        ("# only a comment\n", "sweep.yaml: the sweep file is empty"),
        ("experiment: a\nmatrix: {model: [cnn]}\nexperiment: b\n", "key 'experiment' is given twice, on line 1 and line 3"),
        ("matrix: {model: [cnn]}\nbase:\n  epochs: 1\n  epochs: 2\n", "key 'epochs' is given twice, on line 3 and line 4"),
        ("matrix: {model: [cnn]}\ninclude:\n  - {model: cnn, model: vgg16}\n", "key 'model' is given twice, on line 3 and line 3"),
        ("matrix: {model: [cnn]}\nexclude: 5\n", "key 'exclude' is 5; it must be a list of rules"),
        ("matrix: {model: [cnn]}\ninclude: 5\n", "key 'include' is 5; it must be a list of trials"),
        ("matrix: {model: [cnn]}\nexclude: {model: vgg16}\n", "key 'exclude' is {'model': 'vgg16'}; it must be a list"),
        ("matrix: 5\n", "key 'matrix' is 5; it must be a mapping"),
        ("base: [1]\n", "key 'base' is [1]; it must be a mapping"),
        ("experiment:\nmatrix: {model: [cnn]}\n", "key 'experiment' is empty; it must be a name"),
        ("experiment: [a]\nmatrix: {model: [cnn]}\n", "key 'experiment' is ['a']; it must be a name"),
        ("matrix: {model: [cnn]}\nexclude: [5]\n", "sweep.yaml exclude entry 1: expected a mapping"),
        ("matrix: {model: [cnn]}\ninclude: [{model: cnn}, [vgg16]]\n", "sweep.yaml include entry 2: expected a mapping"),
        ("matrix: {model: [cnn, vgg16]}\nexclude: [{}]\n", "exclude entry 1 is empty: it would drop every trial"),
        ("base: {1: 2}\n", "unknown parameter '1' in"),
        ("matrix: {model: [cnn\n", "sweep.yaml: not valid YAML"),
    ],
)
def test_malformed_sweep_files_exit_2_naming_the_key(tmp_path, capsys, text, message):
    from imagebench.cli import main

    path = _write(tmp_path, text)
    assert main(["sweep", str(path), "--dry-run"]) == 2  # an exception would fail the test: no traceback
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error, error


def test_cli_names_a_malformed_key_and_warns_about_rules_that_change_nothing(project):
    from helpers import run_imagebench

    bad = _write(project, "matrix: {model: [cnn]}\nexclude: 5\n")
    done = run_imagebench("sweep", bad, "--dry-run", cwd=project)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: {bad}: key 'exclude' is 5; it must be a list of rules" in done.stderr
    idle = _write(project, "base: {dataset: digits, image_size: 32}\nmatrix: {model: [cnn, vgg16]}\n"
                           "exclude:\n  - {model: resnet50}\n  - {model: vgg16}\ninclude:\n  - {model: cnn}\n")  # fmt: skip
    done = run_imagebench("sweep", idle, "--dry-run", cwd=project)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings[0] == f"warning: {idle} exclude entry 1 {{model: resnet50}} matches no trial of the matrix: it drops nothing"
    repeated = re.fullmatch(rf"warning: {re.escape(str(idle))} include entry 1 {{model: cnn}} adds no trial: it is trial (\S+) again",
                            warnings[1])  # fmt: skip
    assert len(warnings) == 2 and repeated and done.stdout.split()[3] == repeated[1], done.stderr + done.stdout  # the first row
    assert "1 trials in experiment 'sweep'" in done.stdout


def test_a_trial_file_with_a_repeated_key_is_an_error(tmp_path, capsys):
    from imagebench.cli import main

    path = tmp_path / "trial.yaml"
    path.write_text("epochs: 1\nmodel: cnn\nepochs: 2\n")
    assert main(["trial", "-f", str(path)]) == 2
    assert "key 'epochs' is given twice, on line 1 and line 3" in capsys.readouterr().err
