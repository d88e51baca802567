"""``imagebench sweep | leaderboard | trial | check-data | models | relog | reproduce | diff | compare | cache | server``.

Imports stay light here: TensorFlow and torch load only in a trial (its own kernel/process) or in
``models`` for the one framework asked for.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys
from pathlib import Path
from typing import Optional

from imagebench.models.registry import FRAMEWORKS
from imagebench.core.params import ParamsError

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_ENVIRONMENT = 3  # nothing wrong with the inputs: the MLflow store is down or the disk is full


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE", help="override a parameter (repeatable)"
    )


def _sweep_options(args: argparse.Namespace):
    from imagebench.executors import executor_options
    from imagebench.sweep import SweepOptions

    return SweepOptions(
        workers=args.workers, strategy=args.strategy, eta=args.eta, repeats=args.repeats, rerun=args.rerun,
        trial_timeout=args.trial_timeout, fresh_kernels=args.fresh_kernel, show_progress=not args.quiet,
        executor=args.executor, executor_options={option.key: getattr(args, option.key) for _, option in executor_options()},
    )  # fmt: skip


def _whole_number(text: str) -> int:
    """A count of workers, CPUs or GPUs: a whole number (argparse names the option with the message)."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0 (e.g. 1)")
    return int(text)


def _number(text: str) -> float:
    """An amount of CPUs or GPUs (its range is checked with the sweep's options, naming the option)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1, 2 or 0.25)") from None
    return int(value) if value.is_integer() else value  # "2" stays 2 in every message


def _parity_margin(text: str) -> float:
    """δ of the parity equivalence test: a fraction of test accuracy, 0 < δ < 1 (argparse exits 2 otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1 (e.g. 0.05 for 5 points)")
    return value


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and each executor's own options, from its registry entry (``executors.EXECUTORS``);
    an option given for another executor is refused by ``SweepOptions`` (exit 2)."""
    from imagebench.executors import EXECUTORS, executor_options

    default = "local"
    parser.add_argument("--executor", default=default, help="where trials run: " + " | ".join(
        f"{name} ({entry.help}{', default' if name == default else ''})" for name, entry in EXECUTORS.items()))
    for name, option in executor_options():
        described = f"--executor {name}: " + option.help.format(default=option.default)
        if option.type is bool:  # a switch; None when not given, so another executor's sweep is not refused for it
            parser.add_argument(option.flag, dest=option.key, action="store_const", const=True, default=None, help=described)
            continue
        parser.add_argument(option.flag, dest=option.key, type={int: _whole_number, float: _number}.get(option.type, option.type),
                            help=described)  # fmt: skip


def _print_plan(plan, options) -> None:
    import pandas as pd

    from imagebench.sweep.strategies import strategy_for

    strategy, count = strategy_for(options.strategy)
    trials = strategy.select(plan.trials, count)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        table = plan.table()
        print(table[table["trial"].isin({t.name for t in trials})].to_string(index=False))
        print("\n" + plan.counts().to_string(index=False))
    print(f"\n{len(plan.trials)} trials in experiment '{plan.experiment}'")
    for line in strategy.describe(trials, options):
        print(line)
    if options.repeats > 1:
        print(f"then the best configuration of each model and framework runs with {options.repeats - 1} more seed(s)")
    print("(dry run: nothing executed)")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from imagebench.sweep import grid
    from imagebench import sweep
    from imagebench.core.params import parse_assignments
    from imagebench.training.weights import check_weights, require_weights

    options = _sweep_options(args)
    axes = {key: value.split(",") for key, value in (("model", args.models), ("framework", args.frameworks)) if value}
    plan = grid.plan_sweep(args.file, parse_assignments(args.assignments), experiment=args.experiment, axes=axes)
    for warning in plan.warnings:  # a rule that changes nothing: the sweep runs, the user learns the rule is idle
        print(f"warning: {warning}", file=sys.stderr)
    missing = check_weights(trial.params for trial in plan.trials)
    if args.dry_run:
        for problem in missing:
            print(f"warning: {problem}")
        _print_plan(plan, options)
        return EXIT_OK
    if missing:
        require_weights(trial.params for trial in plan.trials)  # raises with the whole list, before any trial
    summary = sweep.run_sweep(plan, options)
    print(summary.text())
    published_ok = True
    if not args.no_leaderboard and not summary.store_error and (summary.outcomes or summary.skipped):
        _write_leaderboard(plan.experiment, None)
        if not args.no_models and not summary.interrupted:  # stopped by the user: no minute of exports after it
            published_ok = _publish_models(plan.experiment, None, None, prune=True)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.store_error:
        return EXIT_ENVIRONMENT
    return EXIT_TRIALS_FAILED if summary.failed or not published_ok else EXIT_OK


def _publish_models(experiment: str, model: Optional[str], framework: Optional[str], prune: bool) -> bool:
    """The leaders' models logged, exported, checked and registered (``publish``); False if one was not."""
    from imagebench.report import publish

    summary = publish.publish(experiment, model, framework, prune=prune, echo=lambda line: print(line, flush=True))
    for outcome in summary.failed:
        print(f"error: {outcome.label} (run {outcome.run_id}): {outcome.message}", file=sys.stderr)
    return not summary.failed


def _cmd_export(args: argparse.Namespace) -> int:
    from imagebench.report.publish import PublishError

    try:
        published_ok = _publish_models(args.experiment, args.model, args.framework, prune=not args.keep_weights)
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK if published_ok else EXIT_TRIALS_FAILED


def _write_leaderboard(experiment: str, out: Optional[str], parity_margin: Optional[float] = None) -> None:
    """Files under results/<experiment>/ (or ``out``), and the same published into the sweep's parent run."""
    from imagebench.report import leaderboard
    from imagebench.report import parent_run
    from imagebench import store

    out_dir = Path(out) if out else store.results_dir(experiment)  # refuses a name that is no folder, before reading
    board = leaderboard.build(experiment, **({} if parity_margin is None else {"parity_margin": parity_margin}))
    written = leaderboard.write(board, out_dir)
    parent = parent_run.publish(board, written)
    print(parent_run.short_markdown(board.leaders))
    if board.reading:
        print(f"\nReading: {board.reading}")
    print(f"\nfull leaderboard: {out_dir}/leaderboard.html (.md, .csv; plots as PNG)"
          + (f"; in MLflow: the parent run's description and artifacts {parent_run.ARTIFACT_DIR}/" if parent else ""))
    base = store.ui_base_url()
    if base and parent:
        print(f"report: {store.run_url(base, experiment, parent)}")
        print(f"leaders in the runs table (searched for {parent_run.LEADER_SEARCH}; open the sweep's row): "
              f"{store.run_url(base, experiment, search=parent_run.LEADER_SEARCH)}")


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from imagebench.report.leaderboard import LeaderboardError

    try:
        _write_leaderboard(args.experiment, args.out, args.parity_margin)
    except LeaderboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _trial_values(args: argparse.Namespace) -> dict:
    from imagebench.sweep.grid import load_yaml
    from imagebench.core.params import parse_assignments

    values = {}
    for path in args.file or []:
        loaded = load_yaml(Path(path).read_text(encoding="utf-8"), str(path)) or {}  # a repeated key is an error
        if not isinstance(loaded, dict):
            raise ParamsError(f"{path}: expected a mapping of parameter: value")
        values.update(loaded)
    values.update(parse_assignments(args.assignments))
    return values


def _cmd_trial(args: argparse.Namespace) -> int:
    from imagebench.core.params import make_params
    from imagebench.trial import run_trial

    params = make_params(_trial_values(args), where=" ".join(args.file or []) or "--set")
    result = run_trial(params)
    print(json.dumps(result.summary(), indent=2, default=float))
    return EXIT_OK


def _data_report(args: argparse.Namespace) -> dict:
    """Everything check-data finds: every layout problem at once (the loader raises them one per
    line before decoding anything), else what decoding and splitting find (unreadable files,
    classes too small to split)."""
    from imagebench.data.folders import DatasetError
    from imagebench.data.load import load_trial_data
    from imagebench.core.params import make_params

    report = {"dataset": args.path, "problems": [], "skipped_files": [], "images_per_class": {}, "splits": {}}
    try:
        data = load_trial_data(make_params(dataset=args.path, image_size=args.image_size, seed=args.seed))
    except DatasetError as exc:
        report["problems"] = str(exc).splitlines()
    else:
        report.update(dataset=data.source, fingerprint=data.fingerprint, splits=data.split_sizes(),
                      images_per_class=data.class_counts().sum(axis=1).astype(int).to_dict(),
                      skipped_files=data.skipped_files)  # fmt: skip
    classes = len(report["images_per_class"])
    report["summary"] = (
        f"{report['dataset']}: {len(report['problems'])} problem(s) to fix, {len(report['skipped_files'])} unreadable "
        f"file(s) skipped" + (f", {classes} classes, splits {report['splits']}" if classes else "")
    )
    return report


def _cmd_check_data(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():  # the report lists skipped files itself
        warnings.simplefilter("ignore", UserWarning)
        report = _data_report(args)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for name, count in report["images_per_class"].items():
            print(f"  {name:<30} {count:>6}")
        for problem in report["problems"]:
            print(f"  problem: {problem}")
        for line in report["skipped_files"]:
            print(f"  skipped: {line}")
        print(report["summary"])
    return EXIT_BAD_INPUT if report["problems"] else EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from imagebench.backends import get_backend
    from imagebench.models.registry import MODEL_NAMES
    from imagebench.core.params import make_params

    backend = get_backend(args.framework)
    rows = []
    for name in MODEL_NAMES:
        params = make_params(framework=args.framework, model=name, image_size=args.image_size)
        model = backend.build_model(params, args.classes)
        total, trainable = backend.count_params(model)
        flops = backend.count_flops(model, params)  # forward, one image at --image-size, multiply-add = 2
        rows.append({"model": name, "framework": args.framework, "params": total, "trainable": trainable, "flops": flops})
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['model']:<28} {row['params']:>12,} params  {row['trainable']:>12,} trainable  {row['flops']:>16,} FLOPs")
    return EXIT_OK


def _cmd_relog(args: argparse.Namespace) -> int:
    from imagebench.store import record

    journals = record.journals_under(args.paths)
    if not journals:
        print(f"nothing to re-log under {', '.join(args.paths)} (no {record.JOURNAL} left)")
        return EXIT_OK
    done, problems = record.relog_all(journals, args.store)
    for replayed in done:
        ended = replayed.status or "without an end (still RUNNING)"
        print(f"re-logged run {replayed.run_id}: {replayed.entries} entries, ended {ended}  <- {replayed.journal}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(done)} of {len(journals)} journal(s) re-logged")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from imagebench.report import reproduce

    reproduction = reproduce.reproduce(args.run, args.experiment, args.tolerance, verbose=not args.quiet)
    print("\n".join(reproduction.lines()))
    return EXIT_OK if reproduction.verdict != reproduce.DIFFERENT else EXIT_TRIALS_FAILED


def _cmd_diff(args: argparse.Namespace) -> int:
    from imagebench.report import notebook_diff

    path = notebook_diff.write(args.run_a, args.run_b, args.experiment, Path(args.output) if args.output else None)  # bad input: ParamsError
    print(path)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from imagebench import store
    from imagebench.report import compare

    comparison, files, run_id = compare.run(args.a, args.b, Path(args.output) if args.output else None)  # bad input: ParamsError
    print("\n".join(compare.summary_lines(comparison)))
    print(f"\nreport: {files[0].parent}\nrecorded as run {run_id} in experiment '{compare.EXPERIMENT}'")
    base = store.ui_base_url()
    if base:
        print(f"in the MLflow UI: {store.run_url(base, compare.EXPERIMENT, run_id)}")
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace) -> int:
    from imagebench.executors import node_storage

    if args.address:
        from imagebench.executors.ray_cluster import storage_on_nodes

        machines = storage_on_nodes(args.address, args.clear)  # a cluster that does not answer: ParamsError
    else:
        found = node_storage.clear_places() if args.clear else node_storage.places()
        machines = [(f"{node_storage.machine_name()} (this machine)", found)]
    for where, found in machines:
        print("\n".join(node_storage.report_lines(where, found, args.clear)))
    if not args.clear:
        print(f"clear with: imagebench cache --clear{' --address ' + args.address if args.address else ''} "
              "(caches are rebuilt when needed; a running actor's folder is never removed)")
    return EXIT_OK


def _cmd_server(args: argparse.Namespace) -> int:
    from imagebench import server

    return server.main(args.arguments)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagebench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run every trial of a sweep file through papermill")
    sweep.add_argument("file", help="sweep YAML, e.g. params/demo.yaml")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded trial table and count, run nothing")
    sweep.add_argument("--experiment", help="override the experiment (sweep) name")
    sweep.add_argument("--models", help="comma-separated models, replacing the file's choice (e.g. cnn,resnet50)")
    sweep.add_argument("--frameworks", help="comma-separated frameworks, replacing the file's choice (keras,torch)")
    sweep.add_argument("--no-leaderboard", action="store_true", help="do not write the leaderboard afterwards")
    sweep.add_argument("--no-models", action="store_true",
                       help="do not log, export and register the leaders' models afterwards (every trial's weights are "
                            "kept for a later `imagebench export`)")
    sweep.add_argument("--quiet", action="store_true", help="no progress display")
    sweep.add_argument("--workers", type=_whole_number,
                       help="trials run at once, each on its own worker process and kernel (default: 1 locally; "
                            "with --executor ray, as many as the cluster's resources hold)")
    _add_executor_options(sweep)
    sweep.add_argument("--strategy", default="grid", help="grid (default) | random:K (K per model and framework) | halving")
    sweep.add_argument("--eta", type=int, default=3, help="halving: keep the best 1/eta each rung, eta x the epochs (default 3)")
    sweep.add_argument("--repeats", type=int, default=1, help="run each family's best configuration with K seeds in all")
    sweep.add_argument("--rerun", action="store_true", help="run every trial again, even those already FINISHED")
    sweep.add_argument("--trial-timeout", type=float, metavar="SECONDS", help="stop a trial (FAILED) after this long")
    sweep.add_argument("--fresh-kernel", action="store_true",
                       help="start a new kernel for every trial (default: each worker keeps its kernel warm between "
                            "trials of one framework, ~10 s less per trial; it is always replaced after a failure)")
    _add_set(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    board = commands.add_parser("leaderboard", help="build the leaderboard of an experiment from MLflow")
    board.add_argument("--experiment", required=True)
    board.add_argument("--out", help="output folder (default results/<experiment>)")
    board.add_argument("--parity-margin", type=_parity_margin, metavar="DELTA",
                       help="margin of the Keras-vs-PyTorch equivalence test, a fraction of test accuracy (default 0.05 = 5 points)")
    board.set_defaults(func=_cmd_leaderboard)

    export = commands.add_parser("export", help="log, export (ONNX, .keras/.pt2), check and register the leaders' models")
    export.add_argument("--experiment", required=True)
    export.add_argument("--model", help="only this model's leader")
    export.add_argument("--framework", help="only this framework's leaders")
    export.add_argument("--keep-weights", action="store_true",
                        help="keep the weights of trials that lead nothing (deleted by default once every leader is published)")
    export.set_defaults(func=_cmd_export)

    trial = commands.add_parser("trial", help="run one trial in this process")
    trial.add_argument("-f", "--file", action="append", help="YAML of parameters (repeatable, later wins)")
    _add_set(trial)
    trial.set_defaults(func=_cmd_trial)

    check = commands.add_parser("check-data", help="summarise a dataset folder: classes, counts, splits, unreadable files")
    check.add_argument("path")
    check.add_argument("--image-size", type=int, default=32, help="decode size used for the check (default 32)")
    check.add_argument("--seed", type=int, default=42)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_cmd_check_data)

    models = commands.add_parser("models", help="list the registry with parameter and FLOP counts for one framework")
    models.add_argument("--framework", choices=FRAMEWORKS, required=True)
    models.add_argument("--image-size", type=int, default=32)
    models.add_argument("--classes", type=int, default=10)
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_cmd_models)

    relog = commands.add_parser("relog", help="write trial records kept locally while the MLflow store was down into the store")
    relog.add_argument("paths", nargs="+", help="record folders, journal.jsonl files, or folders above them (e.g. results/)")
    relog.add_argument("--store", help="tracking URI to write to (default: the store each journal was meant for)")
    relog.set_defaults(func=_cmd_relog)

    again = commands.add_parser("reproduce", help="run one recorded trial again from its MLflow record and say whether every metric "
                                                  "is identical, within a tolerance, or different (exit 1)")
    again.add_argument("run", help="the trial's run id, or its run name with --experiment")
    again.add_argument("--experiment", help="the experiment (sweep) whose run is named")
    again.add_argument("--tolerance", type=float, help="largest absolute difference that still counts as reproduced "
                                                       "(default 1e-6; durations are never compared)")
    again.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    again.set_defaults(func=_cmd_reproduce)

    diff = commands.add_parser("diff", help="two trials' executed notebooks side by side as HTML (nbdime), the parameters and "
                                            "metrics that differ on top")
    diff.add_argument("run_a", metavar="RUN_A", help="a trial's run id, or its run name with --experiment")
    diff.add_argument("run_b", metavar="RUN_B", help="the other trial's run id or name")
    diff.add_argument("--experiment", help="the experiment (sweep) whose runs are named")
    diff.add_argument("--output", help="the HTML file to write (default results/<experiment>/diffs/<A>-vs-<B>.html)")
    diff.set_defaults(func=_cmd_diff)

    against = commands.add_parser("compare", help="two sweeps configuration by configuration: each test-accuracy delta with its "
                                                  "interval, only changes beyond noise flagged, and what differs in the record")
    against.add_argument("a", metavar="A", help="the sweep compared against: an experiment name, or a sweep's parent run id")
    against.add_argument("b", metavar="B", help="the other sweep (deltas are B minus A)")
    against.add_argument("--output", help="the report folder (default results/comparisons/<A>-vs-<B>/)")
    against.set_defaults(func=_cmd_compare)

    kept = commands.add_parser("cache", help="what imagebench keeps on this machine or on every node of a Ray cluster (decode and "
                                             "feature caches, Ray actors' scratch folders), and --clear to remove it")
    kept.add_argument("--clear", action="store_true", help="remove every cache entry and every dead actor's scratch folder")
    kept.add_argument("--address", help="a Ray cluster (auto, or HOST:PORT of its head): every alive node instead of this machine")
    kept.set_defaults(func=_cmd_cache)

    tracking_server = commands.add_parser("server", add_help=False,
                                          help="the shared MLflow tracking server on PostgreSQL: start | stop | status (see --help)")
    tracking_server.add_argument("arguments", nargs=argparse.REMAINDER)
    tracking_server.set_defaults(func=_cmd_server)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from imagebench.data.folders import DatasetError
    from imagebench.store import StoreUnavailable
    from imagebench.training.weights import WeightsError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["server"]:  # its own parser (python -m imagebench.server): every option and --help pass through
        return _cmd_server(argparse.Namespace(arguments=argv[1:]))
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, a batch scheduler) stops like Ctrl-C: running trials end KILLED, summary printed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except (ParamsError, DatasetError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"error: disk full while writing {exc.filename or 'a file'}: free space and run the same command again "
              f"(a sweep skips the trials that finished)", file=sys.stderr)  # fmt: skip
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
