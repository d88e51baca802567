"""Each executor declares its own command-line options in its registry entry (``executors.EXECUTORS``):
``imagebench sweep`` offers them, ``SweepOptions`` holds them for the chosen executor only, and one
given for another executor is refused (exit 2) naming the executor that takes it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from helpers import run_imagebench

from imagebench import cli, executors
from imagebench.core.params import ParamsError
from imagebench.executors import ExecutorEntry, ExecutorOption, make_executor
from imagebench.sweep import SweepOptions


def _words(text: str) -> str:
    return " ".join(text.split())  # argparse wraps the help to the terminal's width


def test_sweep_help_lists_each_executor_option_with_its_executor_and_default(tmp_path):
    done = run_imagebench("sweep", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in ("--address ADDRESS --executor ray: the cluster to join (auto = the one `ray start` made here, or HOST:PORT of its "
                 "head; default auto)",
                 "--cpus-per-trial CPUS_PER_TRIAL --executor ray: CPUs each trial asks Ray for (default 1; a fraction such as 0.5 packs two "
                 "trials per CPU)",
                 "--gpus-per-trial GPUS_PER_TRIAL --executor ray: GPUs each trial asks Ray for (default 0); a trial only starts where they are; "
                 "a fraction such as 0.25 puts 4 trials on one GPU",
                 "where trials run: local (worker processes on this machine, default) | ray (Ray actors on the nodes of a Ray cluster)"):  # fmt: skip
        assert line in _words(done.stdout), line


@pytest.mark.parametrize("executor, given, message", [
    ("local", {"gpus_per_trial": 1}, "--gpus-per-trial 1 needs --executor ray (this sweep runs on --executor local)"),
    ("local", {"address": "127.0.0.1:6379"}, "--address 127.0.0.1:6379 needs --executor ray"),
    ("local", {"ship_data": True}, "--ship-data needs --executor ray (this sweep runs on --executor local)"),
    ("ray", {"ship_data": "yes"}, "--ship-data takes no value (it is a switch)"),
    ("ray", {"cpus_per_trial": 0}, "--cpus-per-trial 0 is invalid: it must be more than 0 (a fraction such as 0.25 lets 4 trials share one)"),
    ("ray", {"gpus_per_trial": -1}, "--gpus-per-trial -1 is invalid: it must be 0 or more"),
    ("ray", {"gpus_per_trial": -0.25}, "--gpus-per-trial -0.25 is invalid: it must be 0 or more"),
    ("ray", {"gpus_per_trial": 1.5}, "--gpus-per-trial 1.5 is invalid: above 1 it must be a whole number"),
    ("ray", {"cpus_per_trial": 0.00001}, "--cpus-per-trial 1e-05 is invalid: Ray counts in steps of 0.0001"),
    ("ray", {"gpus_per_trial": "half"}, "--gpus-per-trial 'half' is invalid: it must be a number"),
    ("ray", {"address": 6379}, "--address 6379 is invalid: it must be str"),
    ("ray", {"queue": "gpu"}, "unknown executor option 'queue': the executors take address, cpus_per_trial, gpus_per_trial, ship_data"),
])
def test_an_executor_option_is_checked_by_the_executor_that_declares_it(executor, given, message):
    with pytest.raises(ParamsError) as raised:
        SweepOptions(executor=executor, executor_options=given)
    assert message in str(raised.value)


@pytest.mark.parametrize("given", [{"gpus_per_trial": 0.25}, {"gpus_per_trial": 0.3}, {"gpus_per_trial": 2}, {"cpus_per_trial": 0.5}])
def test_fractions_of_one_unit_and_whole_numbers_are_accepted(given):
    assert SweepOptions(executor="ray", executor_options=given).executor_options == given


@dataclass
class QueueExecutor:
    """An executor's class as the registry names it: built from the sweep's options and its own settings."""

    queue: str
    workers: int

    @classmethod
    def from_options(cls, options, settings: dict) -> "QueueExecutor":
        return cls(settings["queue"], options.workers or 1)


def test_a_new_executor_brings_its_options_to_the_command_line_and_gets_their_values(monkeypatch, capsys):
    entry = ExecutorEntry("queue_executor_module", "QueueExecutor", "jobs on a queue",
                          (ExecutorOption("--queue", str, "short", "the queue to submit to (default {default})"),))  # fmt: skip
    monkeypatch.setitem(executors.EXECUTORS, "queue", entry)
    monkeypatch.setitem(sys.modules, "queue_executor_module", SimpleNamespace(QueueExecutor=QueueExecutor))
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--help"])
    assert "--queue QUEUE --executor queue: the queue to submit to (default short)" in _words(capsys.readouterr().out)
    given = cli._sweep_options(parser.parse_args(["sweep", "s.yaml", "--executor", "queue", "--queue", "long", "--workers", "2"]))
    assert make_executor("queue", given) == QueueExecutor("long", 2)
    defaults = cli._sweep_options(parser.parse_args(["sweep", "s.yaml", "--executor", "queue"]))
    assert make_executor("queue", defaults) == QueueExecutor("short", 1)
    with pytest.raises(ParamsError, match="--queue long needs --executor queue"):
        cli._sweep_options(parser.parse_args(["sweep", "s.yaml", "--queue", "long"]))
    with pytest.raises(ParamsError, match="--cpus-per-trial 2 needs --executor ray"):
        cli._sweep_options(parser.parse_args(["sweep", "s.yaml", "--executor", "queue", "--cpus-per-trial", "2"]))
