"""Folder discovery, decoding and splitting on a generated tree (PNG/JPEG, modes, Korean names)."""

import hashlib
import json
import unicodedata

import numpy as np
import pytest
from helpers import KOREAN, make_tree, save_image
from PIL import Image

from imagebench.data.arrays import batch_slices
from imagebench.data.folders import DatasetError
from imagebench.data.load import decode_image, load_trial_data
from imagebench.core.params import make_params

def _tree_hash(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_discovers_classes_counts_and_stratified_split(tmp_path):
    make_tree(tmp_path / "ds")
    before = _tree_hash(tmp_path / "ds")
    data = load_trial_data(make_params(dataset=str(tmp_path / "ds"), image_size=32, val_fraction=0.25, test_fraction=0.25))
    assert data.class_names == sorted(["10", "2", "banana", unicodedata.normalize("NFC", KOREAN)])
    counts = data.class_counts()
    assert counts.sum(axis=1).to_dict() == {"10": 10, "2": 10, "banana": 10, KOREAN: 12}
    assert (counts["val"] >= 2).all() and (counts["test"] >= 2).all()  # stratified: every class in every split
    assert data.train.images.shape[1:] == (32, 32, 3) and data.train.images.dtype == np.uint8
    assert _tree_hash(tmp_path / "ds") == before  # the user's dataset is never written to


def test_labels_follow_pixels(tmp_path):
    classes = make_tree(tmp_path / "ds", per_class=8)
    data = load_trial_data(make_params(dataset=str(tmp_path / "ds"), image_size=32, val_fraction=0.25, test_fraction=0.25))
    for image, label in zip(data.train.images, data.train.labels):
        expected = np.array(classes[data.class_names[label]])
        grey = expected @ [0.299, 0.587, 0.114]
        centre = image[16, 16].astype(float)
        assert np.allclose(centre, expected, atol=3) or np.allclose(centre, grey, atol=3)


def test_split_and_class_map_are_stable_for_a_seed(tmp_path):
    make_tree(tmp_path / "ds")
    params = make_params(dataset=str(tmp_path / "ds"), image_size=32, val_fraction=0.25, test_fraction=0.25, seed=3)
    first, second = load_trial_data(params), load_trial_data(params)
    assert json.dumps(first.class_map()) == json.dumps(second.class_map())
    assert np.array_equal(first.test.labels, second.test.labels) and np.array_equal(first.test.images, second.test.images)
    other = load_trial_data(params.model_copy(update={"seed": 4}))
    assert not np.array_equal(first.test.images, other.test.images)


def test_presplit_folders_are_used_as_given(tmp_path):
    root = tmp_path / "ds"
    for split, count in (("train", 6), ("validation", 2), ("test", 3)):
        for name in ("cat", "dog"):
            for i in range(count):
                save_image(root / split / name / f"{i}.png", "RGB")
    data = load_trial_data(make_params(dataset=str(root), image_size=32))
    assert data.split_sizes() == {"train": 12, "val": 4, "test": 6}
    assert data.class_names == ["cat", "dog"]


def test_unknown_class_in_test_folder_is_an_error(tmp_path):
    root = tmp_path / "ds"
    for split, names in (("train", ("cat", "dog")), ("val", ("cat", "dog")), ("test", ("cat", "cow"))):
        for name in names:
            save_image(root / split / name / "0.png", "RGB")
    with pytest.raises(DatasetError, match="cow"):
        load_trial_data(make_params(dataset=str(root), image_size=32))


def test_missing_dataset_and_single_class_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="neither a built-in name nor an existing folder"):
        load_trial_data(make_params(dataset=str(tmp_path / "nope")))
    save_image(tmp_path / "one" / "only" / "0.png", "RGB")
    with pytest.raises(DatasetError, match="need at least 2"):
        load_trial_data(make_params(dataset=str(tmp_path / "one")))


def test_rgba_transparency_becomes_white_and_grey_becomes_rgb(tmp_path):
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    transparent.save(tmp_path / "t.png")
    assert (decode_image(tmp_path / "t.png", 8) == 255).all()
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    assert (decode_image(tmp_path / "g.png", 8) == 77).all()


def test_builtin_digits_are_upscaled_rgb():
    data = load_trial_data(make_params(image_size=40, max_per_class=20))
    assert data.class_names == [str(d) for d in range(10)]
    assert data.train.images.shape[1:] == (40, 40, 3)
    assert (data.train.images[..., 0] == data.train.images[..., 2]).all()
    assert sum(data.split_sizes().values()) == 200


def test_trailing_single_image_joins_previous_batch():
    batches = batch_slices(np.arange(9), 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]  # BatchNorm needs > 1 value
    assert [b.tolist() for b in batch_slices(np.arange(5), 4)] == [[0, 1, 2, 3, 4]]
    assert [len(b) for b in batch_slices(np.arange(10), 4)] == [4, 4, 2]
    assert [len(b) for b in batch_slices(np.arange(1), 4)] == [1]
