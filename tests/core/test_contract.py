"""The sweep-kernel contract, writer next to reader: the line a trial prints each epoch is the line
the sweep's display reads back (executors.local), and each environment variable has one name."""

from helpers import REPO

from imagebench.core import contract
from imagebench.core.contract import last_progress, parse_progress_line, progress_line

NUMBERS = dict(train_loss=0.51234, train_accuracy=0.8, val_loss=0.61, val_accuracy=0.75, lr=1e-3, seconds=2.34)


def test_the_progress_line_reads_back_as_its_epoch():
    line = progress_line(3, 10, **NUMBERS)
    # what a notebook, a trial's log and a user see: unchanged by moving it here
    assert line == "epoch 3/10  train loss 0.5123 acc 0.8000  | val loss 0.6100 acc 0.7500  | lr 1.00e-03  | 2.3s"
    assert parse_progress_line(line) == (3, 10)
    assert parse_progress_line(progress_line(12, 120, **NUMBERS)) == (12, 120)


def test_other_output_is_not_progress():
    for line in ("cnn: 356,810 params (356,810 trainable)", "frozen backbone: head trained on cached pooled features",
                 "finished run 0123: {'test/accuracy': 0.9}", ""):  # fmt: skip
        assert parse_progress_line(line) is None, line
    assert last_progress("loading data\nbuilding model\n") is None


def test_the_display_shows_the_last_epoch_in_a_stretch_of_output():
    output = "\n".join(["cnn: 356,810 params", progress_line(1, 4, **NUMBERS), "a warning from the framework",
                        progress_line(2, 4, **NUMBERS), ""])  # fmt: skip
    assert last_progress(output) == (2, 4)


def test_each_environment_variable_is_named_once_in_the_source():
    names = {value for key, value in vars(contract).items() if key.startswith("ENV_")}
    assert {"IMAGEBENCH_CACHE", "IMAGEBENCH_FEATURE_CACHE", "IMAGEBENCH_STORE_PATIENCE", "IMAGEBENCH_RUN_ID"} <= names
    for path in (REPO / "src" / "imagebench").rglob("*.py"):
        if path.name != "contract.py":
            text = path.read_text(encoding="utf-8")
            assert not [name for name in names if f'"{name}"' in text], f"{path} names a contract variable itself; import it from core.contract"
