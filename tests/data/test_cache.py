"""The decode cache: decode once per size, invalidated by file changes, safe with concurrent
builders, never trusting a damaged entry."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import make_tree

from imagebench.data import cache
from imagebench.data.folders import folder_fingerprint
from imagebench.data.load import decode_all, load_trial_data
from imagebench.core.params import make_params


def _counting_decoder(calls):
    def decode(files, size):
        calls.append(len(files))
        return decode_all(files, size)

    return decode


def _params(root, size=32):
    return make_params(dataset=str(root), image_size=size, val_fraction=0.2, test_fraction=0.2)


def test_second_load_comes_from_the_cache_with_identical_pixels(tmp_path, private_decode_cache):
    make_tree(tmp_path / "data")
    first = load_trial_data(_params(tmp_path / "data"))
    entries = list((private_decode_cache / "decoded").iterdir())
    assert len(entries) == 1 and (entries[0] / "images.npy").exists()
    second = load_trial_data(_params(tmp_path / "data"))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(first, split).images, getattr(second, split).images)
        np.testing.assert_array_equal(getattr(first, split).labels, getattr(second, split).labels)
    load_trial_data(_params(tmp_path / "data", size=48))  # another size: another entry
    assert len(list((private_decode_cache / "decoded").iterdir())) == 2


def test_decoder_runs_once_and_again_only_when_files_change(tmp_path):
    make_tree(tmp_path / "data")
    files = sorted(p for p in (tmp_path / "data" / "banana").glob("*.png") if not p.name.startswith("."))
    calls = []
    fingerprint = lambda: folder_fingerprint(files, tmp_path / "data")  # noqa: E731
    first = cache.decode_cached(files, fingerprint(), 32, _counting_decoder(calls))
    again = cache.decode_cached(files, fingerprint(), 32, _counting_decoder(calls))
    assert calls == [len(files)] and again.from_cache  # decoded once; both read the same entry
    np.testing.assert_array_equal(first.images, again.images)
    time.sleep(0.01)
    os.utime(files[0], ns=(time.time_ns(), time.time_ns()))  # touched: new mtime, new fingerprint
    changed = cache.decode_cached(files, fingerprint(), 32, _counting_decoder(calls))
    assert calls == [len(files), len(files)] and changed.images.shape[0] == len(files)


def test_damaged_entry_is_detected_removed_and_rebuilt(tmp_path, private_decode_cache):
    make_tree(tmp_path / "data")
    expected = load_trial_data(_params(tmp_path / "data")).train.images
    entry = next((private_decode_cache / "decoded").iterdir())
    images = entry / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])  # truncated, as after a full disk or a kill
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = load_trial_data(_params(tmp_path / "data")).train.images
    np.testing.assert_array_equal(rebuilt, expected)
    assert (entry / "meta.json").exists()  # rebuilt complete


def test_cache_can_be_switched_off(tmp_path, monkeypatch, private_decode_cache):
    monkeypatch.setenv(cache.ENV_CACHE, "off")
    make_tree(tmp_path / "data")
    load_trial_data(_params(tmp_path / "data"))
    assert not private_decode_cache.exists()


BUILDER = """
import sys
from imagebench.data.load import load_trial_data
from imagebench.core.params import make_params
data = load_trial_data(make_params(dataset=sys.argv[1], image_size=40, val_fraction=0.2, test_fraction=0.2))
print(int(data.train.images.sum()))
"""


def test_concurrent_builders_agree_and_leave_one_complete_entry(tmp_path, private_decode_cache):
    make_tree(tmp_path / "data", per_class=30)
    env = {**os.environ, cache.ENV_CACHE: str(private_decode_cache)}
    builders = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "data")], env=env, stdout=subprocess.PIPE,
                                 text=True) for _ in range(4)]
    sums = {builder.communicate(timeout=300)[0].strip() for builder in builders}
    assert all(builder.returncode == 0 for builder in builders) and len(sums) == 1
    entries = [path for path in (private_decode_cache / "decoded").iterdir() if not path.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "meta.json").exists()
    assert not list((private_decode_cache / "decoded").glob(".*partial"))  # no staging folder left behind


def test_a_full_disk_while_writing_leaves_no_entry_and_the_trial_goes_on(tmp_path, private_decode_cache, monkeypatch):
    import errno

    make_tree(tmp_path / "data")
    expected = load_trial_data(_params(tmp_path / "data", size=40)).train.images  # the reference, then clean up
    for entry in (private_decode_cache / "decoded").iterdir():
        shutil.rmtree(entry)
    real_save = np.save

    def save_until_full(path, array):
        real_save(path, array[: len(array) // 2])  # half the bytes reach the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.np, "save", save_until_full)
    with pytest.warns(UserWarning, match="No space left on device"):
        data = load_trial_data(_params(tmp_path / "data", size=40))
    np.testing.assert_array_equal(data.train.images, expected)  # decoded in memory: the trial goes on
    assert not any((private_decode_cache / "decoded").iterdir())  # no half-written entry, no staging folder
    monkeypatch.setattr(cache.np, "save", real_save)
    assert not load_trial_data(_params(tmp_path / "data", size=40)).skipped_files  # later trials build it whole
    assert len(list((private_decode_cache / "decoded").iterdir())) == 1
