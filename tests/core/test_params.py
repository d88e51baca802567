import pytest

from imagebench.core.params import FIELD_NAMES, ParamsError, TrialParams, make_params, params_from_notebook, parse_assignments


def test_defaults_validate_and_resolve_family_recipes():
    cnn = make_params()
    assert cnn.resolved_head_units == [128] and cnn.resolved_pooling == "flatten"
    vgg = make_params(model="vgg16")
    assert vgg.tracked()["head_units"] == [256] and vgg.tracked()["pooling"] == "avg"


def test_unknown_key_names_the_key_and_the_closest_valid_one():
    with pytest.raises(ParamsError, match=r"unknown parameter 'learning_rat'.*did you mean 'learning_rate'"):
        make_params({"learning_rat": 0.1})


def test_bad_choice_names_value_and_allowed_values():
    with pytest.raises(ParamsError) as error:
        make_params(optimizer="adm")
    message = str(error.value)
    assert "'optimizer'" in message and "'adm'" in message and "rmsprop, adam, adamw, sgd" in message


def test_out_of_range_value_is_named():
    with pytest.raises(ParamsError, match=r"'dropout' = 1.5"):
        make_params(dropout=1.5)


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"model": "cnn", "weights": "imagenet"}, "no pretrained backbone"),
        ({"model": "cnn", "freeze_backbone": True}, "no backbone to freeze"),
        ({"optimizer": "adam", "weight_decay": 0.01}, "adamw only"),
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "less than 10%"),
    ],
)
def test_inconsistent_combinations_are_explained(values, fragment):
    with pytest.raises(ParamsError, match=fragment):
        make_params(values)


@pytest.mark.parametrize("text, expected", [("512,256", [512, 256]), ("[512, 256, 128, 64]", [512, 256, 128, 64]), ("None", None), (64, [64])])
def test_head_units_accepts_papermill_and_cli_spellings(text, expected):
    assert make_params(model="vgg16", head_units=text).head_units == expected


def test_set_assignments_are_typed_and_checked():
    assert parse_assignments(["epochs=3", "learning_rate=1e-3", "freeze_backbone=true"]) == {
        "epochs": 3, "learning_rate": 0.001, "freeze_backbone": True
    }
    with pytest.raises(ParamsError, match="did you mean 'epochs'"):
        parse_assignments(["epoch=3"])
    with pytest.raises(ParamsError, match="key=value"):
        parse_assignments(["epochs"])


def test_notebook_namespace_rejects_injected_typos():
    before = {"In", "Out"}
    namespace = {"In": 1, "Out": 2, "model": "vgg16", "learning_rate": 0.01, "_hidden": 1}
    assert params_from_notebook(namespace, before).model == "vgg16"
    with pytest.raises(ParamsError, match="did you mean 'batch_size'"):
        params_from_notebook({**namespace, "batch_sise": 8}, before)


def test_every_field_has_a_default():
    assert set(TrialParams().model_dump()) == set(FIELD_NAMES)


def test_a_warm_kernel_forgets_the_last_trials_parameters():
    from imagebench.core.params import names_before_parameters

    # a kernel that ran a trial already: its parameters and results are still defined
    namespace = {"In": 1, "framework": "keras", "learning_rate": 0.5, "params": object(), "result": object()}
    before = names_before_parameters(namespace)
    assert before == {"In"} and set(namespace) == {"In"}
    namespace.update({"framework": "torch"})  # this trial's cells define only the framework
    params = params_from_notebook(namespace, before)
    assert (params.framework, params.learning_rate) == ("torch", TrialParams().learning_rate)
