"""--ship-data's package: a folder decoded once, received once on a node, and the trial's data
from it exactly what the folder gives (same images, splits, class names, fingerprint). The sweep
through a real Ray cluster: tests/executors/test_ray_cluster.py."""

import numpy as np
import pytest
from helpers import make_tree, save_image, tiny_values

from imagebench.core.contract import ENV_SHIPPED_DATA
from imagebench.core.params import make_params
from imagebench.data import shipping
from imagebench.data.folders import DatasetError
from imagebench.data.load import load_trial_data


@pytest.mark.parametrize("layout", ["class folders", "own splits"])
def test_a_shipped_dataset_gives_the_trial_exactly_what_its_folder_gives(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("IMAGEBENCH_CACHE", str(tmp_path / "here"))
    root = tmp_path / "photos"
    if layout == "class folders":
        make_tree(root, per_class=8)
    else:  # train/ and test/: val carved from train
        for split, count in (("train", 8), ("test", 3)):
            for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
                for index in range(count):
                    save_image(root / split / name / f"{index}.png", "RGB", color=colour)
    params = make_params(tiny_values(dataset=str(root), max_per_class=None, val_fraction=0.25, test_fraction=0.25))
    from_folder = load_trial_data(params)

    package = shipping.pack_folder(str(root), params.image_size)
    assert package.fingerprint == from_folder.fingerprint and package.digest == shipping.digest_of(package.data)
    node = tmp_path / "node-cache"
    received, first = shipping.receive(package, node)
    assert first and shipping.receive(package, node) == (received, False)  # every later trial reuses it
    root.rename(tmp_path / "gone")  # the node has no folder: the trial reads the package alone
    monkeypatch.setenv(ENV_SHIPPED_DATA, str(received))
    shipped = load_trial_data(params)
    assert (shipped.class_names, shipped.fingerprint, shipped.source) == (from_folder.class_names, from_folder.fingerprint, from_folder.source)
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(shipped, split).images, getattr(from_folder, split).images), split
        assert np.array_equal(getattr(shipped, split).labels, getattr(from_folder, split).labels), split
    with pytest.raises(DatasetError, match="neither a built-in name nor an existing folder"):
        load_trial_data(make_params(tiny_values(dataset=str(root), image_size=48)))  # another size was not shipped


def test_a_damaged_package_is_refused(tmp_path):
    make_tree(tmp_path / "photos", per_class=4)
    package = shipping.pack_folder(str(tmp_path / "photos"), 32)
    damaged = shipping.Package(package.data[:-10] + b"0123456789", package.digest, package.fingerprint, package.source, 32)
    with pytest.raises(DatasetError, match="arrived damaged"):
        shipping.receive(damaged, tmp_path / "node")
    assert not list((tmp_path / "node").rglob("meta.json"))
