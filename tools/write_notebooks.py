"""Regenerate the three notebooks (clean, tagged). The train.ipynb parameters cell is written from
TrialParams, so the two can never drift; tests/test_notebooks.py checks the committed files."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from imagebench.core.params import TrialParams

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters_source() -> str:
    lines = ["# Parameters: every knob of one trial (defaults == imagebench.core.params.TrialParams)."]
    for name, info in TrialParams.model_fields.items():
        comment = f"  # {info.description}" if info.description else ""
        lines.append(f"{name} = {info.default!r}{comment}")
    return "\n".join(lines)


def tagged(source: str, *tags: str):
    cell = new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    return cell


def kernel_metadata() -> dict:
    return {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }


def train() -> nbformat.NotebookNode:
    return new_notebook(
        metadata=kernel_metadata(),
        cells=[
            new_markdown_cell(
                "# Train one trial\n\nEdit the parameters cell and run all cells, or run it with papermill:\n\n"
                "    papermill notebooks/train.ipynb out.ipynb -p model resnet50 -p framework torch\n\n"
                "The trial is recorded in MLflow (params, per-epoch curves, test metrics of the val-best "
                "weights, artifacts). Under `imagebench sweep` it fills the sweep's child run."
            ),
            new_code_cell(
                "%matplotlib inline\nfrom IPython.display import display\n\n"
                "from imagebench.core.params import names_before_parameters, params_from_notebook\nfrom imagebench.trial import run_trial\n\n"
                "_names_before = names_before_parameters(globals())  # every name the next cells add must be a parameter"
            ),
            tagged(parameters_source(), "parameters"),
            new_code_cell("params = params_from_notebook(globals(), _names_before)\nparams.tracked()"),
            new_code_cell("result = run_trial(params)"),
            new_markdown_cell("## Learning curves and test results (weights of the best validation epoch)"),
            new_code_cell("display(*result.images())  # the PNGs logged to MLflow (result.*_figure() redraw them as matplotlib figures)"),
            new_code_cell("print(result.report)\nresult.summary()"),
        ],
    )


def leaderboard() -> nbformat.NotebookNode:
    return new_notebook(
        metadata=kernel_metadata(),
        cells=[
            new_markdown_cell(
                "# Leaderboard\n\nBuilt from MLflow alone. One row per (model, framework): the trial with the best "
                "validation accuracy (ties: lower validation loss), reporting that trial's test metrics."
            ),
            new_code_cell(
                "%matplotlib inline\nimport pandas as pd\nfrom IPython.display import display\n\n"
                "from imagebench.report import leaderboard\nfrom imagebench import sweep"
            ),
            tagged('experiment = "demo"  # MLflow experiment: the sweep name\nwrite_files = True  # also write results/<experiment>/\n'
                   "parity_margin = 0.05  # margin δ of the Keras-vs-PyTorch equivalence test: 0.05 is 5 points of test accuracy\n"
                   "publish_models = False  # also log, export (ONNX, .keras/.pt2), check and register the leaders' models, as `imagebench export` does\n"
                   'diff_runs = ""  # "RUN_A RUN_B": two trials (run ids or names) whose executed notebooks are shown side by side, as `imagebench diff` does\n'
                   'compare_with = ""  # another sweep (experiment name or parent run id) this experiment is compared against, as `imagebench compare` does',
                   "parameters"),
            new_code_cell("board = leaderboard.build(experiment, parity_margin=parity_margin)\nprint(board.reading)\n"
                          "with pd.option_context('display.max_columns', None):\n    display(board.leaders.round(4), board.parity.round(4))"),
            new_code_cell("for name, figure in board.figures.items():\n    display(figure)"),
            new_code_cell("with pd.option_context('display.max_rows', 200, 'display.max_columns', None):\n    display(board.trials.round(4))"),
            new_code_cell("if write_files:\n    for path in leaderboard.write(board, sweep.results_dir(experiment)):\n        print(path)"),
            new_code_cell(
                "if publish_models:  # one worker process per framework; the trials' weights are kept (imagebench export deletes the rest)\n"
                "    from imagebench.report import publish\n\n"
                "    published = publish.publish(experiment, prune=False)\n"
                "    display(pd.DataFrame([vars(outcome) for outcome in published.outcomes]))"
            ),
            new_code_cell(
                "if diff_runs:  # the parameters and metrics that differ on top, then the two notebooks (nbdime)\n"
                "    from IPython.display import HTML\n    from imagebench.report import notebook_diff\n\n"
                "    display(HTML(notebook_diff.render(diff_runs, experiment=experiment)))"
            ),
            new_code_cell(
                "if compare_with:  # A: compare_with, B: this experiment; deltas are B minus A, only changes beyond noise flagged\n"
                "    from imagebench.report import compare\n\n"
                "    comparison = compare.compare(compare_with, experiment)\n"
                "    print(comparison.reading)\n"
                "    with pd.option_context('display.max_columns', None):\n"
                "        display(comparison.table.round(4), comparison.differences)\n"
                "    display(compare.figure(comparison))\n"
                "    if write_files:  # the report folder and the comparison run, as the command writes them\n"
                "        files = compare.write(comparison)\n"
                "        print(files[0].parent, compare.record(comparison, files))"
            ),
        ],
    )


def explore() -> nbformat.NotebookNode:
    return new_notebook(
        metadata=kernel_metadata(),
        cells=[
            new_markdown_cell("# Explore a dataset\n\nClass counts per split, split sizes and example images per class, "
                              "exactly as a trial with these settings would see them."),
            new_code_cell(
                "%matplotlib inline\nfrom IPython.display import display\n\n"
                "from imagebench.core import plots\nfrom imagebench.data.load import load_trial_data\nfrom imagebench.core.params import make_params"
            ),
            tagged(
                'dataset = "digits"  # built-in name or a folder of class folders\nimage_size = 64\n'
                "val_fraction = 0.15\ntest_fraction = 0.15\nseed = 42",
                "parameters",
            ),
            new_code_cell(
                "data = load_trial_data(make_params(dataset=dataset, image_size=image_size, val_fraction=val_fraction,\n"
                "                                   test_fraction=test_fraction, seed=seed))\n"
                "counts = data.class_counts()\nprint(f'{data.source}: {data.num_classes} classes, splits {data.split_sizes()}, '\n"
                "      f'{len(data.skipped_files)} unreadable files skipped')\ncounts"
            ),
            new_code_cell("display(plots.class_counts(counts))"),
            new_code_cell("display(plots.sample_grid(data.train.images, data.train.labels, data.class_names))"),
        ],
    )


def main() -> None:
    for name, build in {"train": train, "leaderboard": leaderboard, "explore": explore}.items():
        notebook = build()
        for index, cell in enumerate(notebook.cells):
            cell.id = f"{name}-{index}"  # stable ids: regenerating changes only what changed
        nbformat.write(notebook, NOTEBOOKS / f"{name}.ipynb")


if __name__ == "__main__":
    main()
