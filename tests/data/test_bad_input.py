"""Bad-input corpus (issue 5): every file is generated here with Pillow; each case checks the pixels or the message."""

import json

import numpy as np
import pytest
from PIL import Image

from imagebench.data.load import decode_all, decode_image

SIZE = 16


def test_cmyk_jpeg_becomes_the_same_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 32), (200, 40, 30)).convert("CMYK").save(path, quality=95)
    pixels = decode_image(path, SIZE)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert np.abs(pixels.reshape(-1, 3).mean(0) - [200, 40, 30]).max() < 12


def test_16_bit_png_is_scaled_not_clipped_or_stretched(tmp_path):
    path = tmp_path / "deep.png"
    values = np.full((8, 8), 32896, dtype=np.uint16)  # half scale: 128 * 257
    values[:, 4:] = 65535
    Image.fromarray(values).save(path)
    pixels = decode_image(path, 8)
    assert pixels[0, 0].tolist() == [128, 128, 128] and pixels[0, 7].tolist() == [255, 255, 255]


def test_16_bit_png_with_a_dark_maximum_stays_dark(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((8, 8), 257 * 20, dtype=np.uint16)).save(path)
    assert decode_image(path, 8)[0, 0].tolist() == [20, 20, 20]  # not stretched to white


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 10:] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    pixels = decode_image(path, 20)
    assert pixels[2, 10, 0] > 200 and pixels[2, 10, 2] < 60  # the left (red) half is on top now
    assert pixels[17, 10, 2] > 200 and pixels[17, 10, 0] < 60


def test_palette_with_transparency_gets_a_white_background(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    assert decode_image(path, 8)[0, 0].tolist() == [255, 255, 255]


def test_broken_files_are_skipped_with_their_reason(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is a text file with an image extension")
    with pytest.warns(UserWarning, match="skipped 3"):
        images, kept, skipped = decode_all([good, truncated, empty, fake], 8)
    assert kept == [0] and len(images) == 1
    assert [entry.split(":")[0] for entry in skipped] == [str(truncated), str(empty), str(fake)]


def _class_tree(root, counts):
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 9 % 255, 40, 90)).save(root / name / f"{i}.png")
    return root


def _load(root, **values):
    from imagebench.data.load import load_trial_data
    from imagebench.core.params import make_params

    return load_trial_data(make_params(dataset=str(root), image_size=32, **values))


def test_an_empty_class_folder_is_named_not_dropped(tmp_path):
    from imagebench.data.folders import DatasetError

    root = _class_tree(tmp_path / "data", {"cat": 10, "dog": 10, "empty_one": 0})
    with pytest.raises(DatasetError, match=r"no images: .*empty_one; add images or remove"):
        _load(root)


def test_a_class_missing_from_the_validation_folder_is_an_error(tmp_path):
    from imagebench.data.folders import DatasetError

    _class_tree(tmp_path / "data" / "train", {"cat": 10, "dog": 10, "fox": 10})
    _class_tree(tmp_path / "data" / "val", {"cat": 3, "dog": 3})
    with pytest.raises(DatasetError, match=r"val: classes \['fox'\] .* have no images here"):
        _load(tmp_path / "data")


def test_a_class_too_small_to_split_is_named(tmp_path):
    from imagebench.data.folders import DatasetError

    root = _class_tree(tmp_path / "data", {"cat": 10, "dog": 10, "rare": 1})
    with pytest.raises(DatasetError, match=r"'rare' has 1 image\(s\)"):
        _load(root)


def test_a_huge_photo_decodes_in_little_memory(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "huge.jpg"
    Image.new("RGB", (12000, 9000), (120, 40, 200)).save(path, quality=80)
    code = ("import resource, sys; from pathlib import Path; from imagebench.data.load import decode_image; "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"pixels = decode_image(Path({str(path)!r}), 64); "
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before; "
            "print(grown, pixels[0, 0].tolist())")
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True, check=True)
    grown_kb, pixel = done.stdout.split(maxsplit=1)
    assert int(grown_kb) < 100_000  # a full decode would take 324 MB; draft mode decodes at 1/8 scale
    assert abs(json.loads(pixel)[2] - 200) < 6 and "DecompressionBomb" not in done.stderr


def test_an_oversized_non_jpeg_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a small limit stands in for a 200-megapixel PNG
    path = tmp_path / "big.png"
    Image.new("RGB", (50, 50)).save(path)
    with pytest.warns(UserWarning, match="skipped 1"):
        _images, kept, skipped = decode_all([path], 8)
    assert kept == [] and "too large to decode safely" in skipped[0]
    jpeg = tmp_path / "big.jpg"
    Image.new("RGB", (50, 50), (10, 200, 10)).save(jpeg)
    assert decode_image(jpeg, 8)[0, 0, 1] > 180  # JPEGs decode at reduced scale: no limit needed


def test_korean_class_names_are_drawn_not_boxes(recwarn):
    import io

    from imagebench.core import plots

    figure = plots.confusion_matrix(np.eye(2, dtype=int), ["사과", "banana"], "test confusion matrix")
    figure.savefig(io.BytesIO(), format="png")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_check_data_reports_every_problem_at_once(tmp_path, capsys):
    from imagebench.cli import main

    root = tmp_path / "data"
    for split, classes in (("train", {"cat": 6, "dog": 6, "fox": 6, "owl": 0}), ("val", {"cat": 2, "dog": 2}),
                           ("test", {"cat": 2, "dog": 2, "fox": 2, "yak": 2})):
        _class_tree(root / split, classes)
    assert main(["check-data", str(root), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    problems = "\n".join(report["problems"])
    assert len(report["problems"]) == 3, problems
    assert "no images: " in problems and "owl" in problems  # the empty class folder
    assert "val: classes ['fox']" in problems  # a class missing from a split
    assert "test: classes ['yak'] are not in" in problems  # a class only in test
    assert report["summary"].endswith("3 problem(s) to fix, 0 unreadable file(s) skipped")


def test_check_data_lists_skipped_files_and_counts_a_usable_dataset(tmp_path, capsys):
    from imagebench.cli import main

    root = _class_tree(tmp_path / "data", {"cat": 8, "dog": 8})
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "dog" / "Thumbs.db").write_bytes(b"\0")
    assert main(["check-data", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"skipped: {root / 'cat' / 'broken.jpg'}" in out and "Thumbs" not in out
    assert out.strip().splitlines()[-1].startswith(f"{root}: 0 problem(s) to fix, 1 unreadable file(s) skipped, 2 classes")
