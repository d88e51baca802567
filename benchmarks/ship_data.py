"""--ship-data: what shipping a dataset costs, per node, against a node decoding its own copy.

On a Ray cluster on this machine (Ray's ``cluster_utils.Cluster`` on 127.0.0.1: a head running no
task and two nodes of one CPU), for two datasets:

- ``digits``: scikit-learn's digits written as a folder of PNGs (1,797 images, 10 classes), at 64 px;
- ``folder224``: 2,000 JPEG photos (256 px, 10 classes, smooth colour fields with grain, so they
  compress like photos rather than like flat test images), at 224 px.

Measured: on the driver, the decode (the sweep's data check does it anyway) and the pack
(compressed ``.npz``) and its bytes; on each node, the first fetch from the object store, digest
check and unpack into the node's cache (``ours``), and a later trial's reuse; the baseline is the
same node decoding the folder itself into a fresh cache (what a node with a copy does before its
first trial).

    python benchmarks/ship_data.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every node on 127.0.0.1
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_record  # noqa: E402

import numpy as np  # noqa: E402


def digits_folder(root: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels / 16 * 255).astype(np.uint8)).save(folder / f"{index}.png")
    return root


def photo_folder(root: Path, count: int = 2000, size: int = 256) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[None, :, None]
    for index in range(count):
        folder = root / f"class{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        base, tilt = rng.uniform(0, 255, 3), rng.uniform(-120, 120, 3)
        pixels = base + tilt * ramp + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.jpg", quality=90)
    return root


def on_node(node_id: str, function, *args):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    return ray.get(task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(*args))


def fetch_and_unpack(ref: list, digest: str, fingerprint: str, dataset: str, size: int, cache: str) -> tuple[float, float]:
    """On a node: (first fetch + check + unpack seconds, a later trial's reuse seconds)."""
    import ray

    from imagebench.data import shipping

    started = time.perf_counter()
    package = shipping.Package(ray.get(ref[0]), digest, fingerprint, dataset, size)
    folder, _first = shipping.receive(package, Path(cache))
    shipping.unpack(folder)
    first = time.perf_counter() - started
    started = time.perf_counter()
    shipping.receive(package, Path(cache))
    shipping.unpack(folder)
    return first, time.perf_counter() - started


def decode_here(dataset: str, size: int, cache: str) -> float:
    """On a node with its own copy: decode the folder into a fresh cache, as before its first trial."""
    os.environ["IMAGEBENCH_CACHE"] = cache
    from imagebench.data.folders import resolve_dataset_path
    from imagebench.data.load import decode_folder

    started = time.perf_counter()
    decode_folder(resolve_dataset_path(dataset), size)
    return time.perf_counter() - started


def measure(name: str, folder: Path, size: int, nodes: list[str], scratch: Path, repeats: int) -> None:
    import ray

    from imagebench.data import shipping
    from imagebench.data.folders import resolve_dataset_path
    from imagebench.data.load import decode_folder

    os.environ["IMAGEBENCH_CACHE"] = str(scratch / f"{name}-driver-cache")
    started = time.perf_counter()
    decoded = decode_folder(resolve_dataset_path(str(folder)), size)
    decode_seconds = time.perf_counter() - started
    raw_bytes = sum(part.images.nbytes + part.labels.nbytes for part in decoded.parts.values())
    started = time.perf_counter()
    package = shipping.pack(decoded, str(folder))
    pack_seconds = time.perf_counter() - started
    ref = [ray.put(package.data)]
    shipped, reused, baseline = [], [], []
    for repeat in range(repeats):
        for number, node in enumerate(nodes):
            first, again = on_node(node, fetch_and_unpack, ref, package.digest, package.fingerprint, str(folder), size,
                                   str(scratch / f"{name}-ship-{repeat}-{number}"))  # fmt: skip
            shipped.append(first)
            reused.append(again)
            baseline.append(on_node(node, decode_here, str(folder), size, str(scratch / f"{name}-decode-{repeat}-{number}")))
    images = sum(len(part) for part in decoded.parts.values())
    write_record(f"ship_data_{name}", baseline, shipped, "s per node",
                 "none: a measurement of what a node without the folder pays, next to what a node with a copy pays",
                 higher_is_better=False, packages=["ray", "pillow"],
                 notes=f"{images} images at {size} px; baseline: a node decodes its own copy into a fresh cache; ours: it fetches the "
                       f"shipped package from the object store, checks its digest and unpacks it into its cache; 2 nodes x {repeats}",
                 extra={"images": images, "image_size": size, "raw_bytes": raw_bytes, "shipped_bytes": len(package.data),
                        "driver_decode_seconds": round(decode_seconds, 3), "driver_pack_seconds": round(pack_seconds, 3),
                        "reuse_seconds_median": float(np.median(reused))})  # fmt: skip
    print(f"{name}: {images} images at {size} px, {raw_bytes / 1e6:.1f} MB decoded -> {len(package.data) / 1e6:.1f} MB shipped; "
          f"driver: decode {decode_seconds:.1f} s, pack {pack_seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="ship-bench-") as folder:
        scratch = Path(folder)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR")
        try:
            nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU")]
            measure("digits", digits_folder(scratch / "digits"), 64, nodes, scratch, args.repeats)
            measure("folder224", photo_folder(scratch / "photos"), 224, nodes, scratch, args.repeats)
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    main()
