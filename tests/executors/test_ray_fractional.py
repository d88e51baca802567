"""Small trials sharing a GPU: ``--gpus-per-trial 0.25`` on a real Ray cluster on 127.0.0.1 whose
node declares one GPU (Ray lets a CPU-only node declare ``num_gpus``; it places actors by the
declared count and sets ``CUDA_VISIBLE_DEVICES``, which is what is proven here). Fast: how many
trials the nodes hold, counted in Ray's units."""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node and the driver on loopback (before ray is imported)

import pytest  # noqa: E402
from helpers import inject_cell, run_shell, run_sweep, trial_runs, write_sweep_file  # noqa: E402
from readme_blocks import block  # noqa: E402

from imagebench import store  # noqa: E402
from imagebench.executors.ray_cluster import SHARED_GPU_ENVIRONMENT, trial_environment, trials_at_once  # noqa: E402

TRIAL_SECONDS = 10  # each trial holds its share this long at least: trials placed together overlap for sure
ENVIRONMENT_CELL = ("import os, time\n"
                    "print('CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))\n"
                    "print('TF_FORCE_GPU_ALLOW_GROWTH=' + os.environ.get('TF_FORCE_GPU_ALLOW_GROWTH', 'unset'))\n"
                    f"time.sleep({TRIAL_SECONDS})\n")  # fmt: skip


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head that runs no trial and one node of 8 CPUs declaring 1 GPU."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=8, num_gpus=1, node_ip_address="127.0.0.1")
    yield cluster
    cluster.shutdown()


def most_at_once(runs) -> int:
    """The most runs RUNNING at the same moment (from their recorded start and end times)."""
    spans = [(run.info.start_time, run.info.end_time) for run in runs]
    return max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)


@pytest.mark.slow
def test_a_quarter_gpu_runs_four_trials_at_once_and_ray_never_packs_a_fifth(project, gpu_cluster):
    """Five slots asked at 0.25 GPU each on a 1-GPU node: Ray places four actors, the fifth waits (how
    many fractions fit, e.g. 3 at 0.3, is counted by ``trials_at_once``, tested below)."""
    inject_cell(project, ENVIRONMENT_CELL)
    write_sweep_file(project, "quarter", "{learning_rate: [0.001, 0.002, 0.003, 0.004, 0.005]}", epochs=1)
    line = block("ray-fractional").commands(**{"params/smoke.yaml": "params/quarter.yaml",
                                               "--executor ray": f"--executor ray --address {gpu_cluster.address} --workers 5"})[0]  # fmt: skip
    done = run_shell(line, project)  # docs/guides/cluster.md
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "5 trial(s) at once (room for 4), each asking 1 CPU(s) and 0.25 GPU(s)" in done.stdout
    runs = trial_runs("quarter")
    assert len(runs) == 5 and {run.info.status for run in runs} == {"FINISHED"}
    assert most_at_once(runs) == 4 and len({run.data.tags[store.TAG_KERNEL] for run in runs}) == 4
    notebook = next((project / "results" / "quarter" / "runs").glob("*.ipynb")).read_text()
    assert "CUDA_VISIBLE_DEVICES=0" in notebook and "TF_FORCE_GPU_ALLOW_GROWTH=true" in notebook  # Ray's GPU, shared politely

    refused = run_sweep(project, write_sweep_file(project, "toomuch", "{learning_rate: [0.001]}", epochs=1), "--executor", "ray",
                        "--address", gpu_cluster.address, "--gpus-per-trial", "2")  # fmt: skip
    assert refused.returncode == 2 and "has 1 CPU(s) and 2 GPU(s) for one trial" in refused.stderr and "1 GPU" in refused.stderr
    assert not trial_runs("toomuch")


# --- fast
NODE = {"Resources": {"CPU": 8.0, "GPU": 1.0}}


@pytest.mark.parametrize("cpus, gpus, expected", [(1, 0.25, 4), (1, 0.3, 3), (1, 0.1, 8), (0.5, 0, 16), (1, 1, 1), (1, 2, 0), (0.7, 0.1, 10)])
def test_trials_at_once_counts_in_rays_units(cpus, gpus, expected):
    assert trials_at_once([NODE], cpus, gpus) == expected
    assert trials_at_once([{"Resources": {"CPU": 0.7}}], 0.1, 0) == 7  # 0.7 // 0.1 is 6 in floats


def test_only_a_shared_gpu_asks_tensorflow_to_grow_its_memory():
    assert trial_environment({"A": "1"}, 0.25) == {"A": "1", **SHARED_GPU_ENVIRONMENT}
    assert trial_environment({"A": "1"}, 1) == trial_environment({"A": "1"}, 0) == {"A": "1"}
