"""Tests for :mod:`sk_mann.datasets._omniglot`.

Most tests run on tiny synthetic zips built in ``tmp_path`` with the official
layout. The tests marked "real data" need the official zips in
``<data home>/omniglot/``, where the data home is the ``SK_MANN_DATA``
environment variable or ``../shared/data`` next to the repository; they are
skipped when the zips are absent. They use the default cache location, so
only the first run pays for decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils import Bunch

from sk_mann.datasets import _omniglot, fetch_omniglot, get_data_home

# ---------------------------------------------------------------------------
# Synthetic data: 2 characters x 2 drawers per zip, in the official layout.
# ---------------------------------------------------------------------------

# zip name -> list of (alphabet, character folder, character id)
SYNTHETIC = {
    "images_background": [("Alpha", "character01", 1), ("Alpha", "character02", 2)],
    "images_evaluation": [("Beta", "character01", 1200), ("Beta", "character02", 1201)],
}
DRAWERS = (1, 2)
BLANK = (2, 2)  # (character id, drawer) of an image without strokes


def stroke_mask(char_id, drawer):
    """Ink mask (True = stroke) of a synthetic 105x105 image.

    A vertical bar aligned on 5x5 blocks, so that downscaling to 21x21 pixels
    is exact.
    """
    mask = np.zeros((105, 105), dtype=bool)
    if (char_id, drawer) != BLANK:
        left = 5 * (char_id % 7 + drawer)
        mask[20:85, left : left + 10] = True
    return mask


def png_bytes(mask):
    """A 1-bit PNG like Omniglot's: background True/white, strokes black."""
    image = Image.fromarray(~mask)
    assert image.mode == "1"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_zip_bytes(name):
    entries = {f"{name}/": None}
    for alphabet, character, char_id in SYNTHETIC[name]:
        entries[f"{name}/{alphabet}/"] = None
        entries[f"{name}/{alphabet}/{character}/"] = None
        for drawer in DRAWERS:
            path = f"{name}/{alphabet}/{character}/{char_id:04d}_{drawer:02d}.png"
            entries[path] = png_bytes(stroke_mask(char_id, drawer))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        # Reverse order: the loader must sort the samples itself.
        for path, content in reversed(list(entries.items())):
            if content is None:
                archive.writestr(path, b"")
            else:
                archive.writestr(path, content)
    return buffer.getvalue()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home directory, so the fallback cache stays inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SK_MANN_DATA", raising=False)
    return home


@pytest.fixture
def data_home(tmp_path, home):
    """A data home holding the two synthetic zips."""
    data_home = tmp_path / "data"
    folder = data_home / "omniglot"
    folder.mkdir(parents=True)
    for name in SYNTHETIC:
        (folder / f"{name}.zip").write_bytes(synthetic_zip_bytes(name))
    return data_home


@pytest.fixture
def read_only(tmp_path):
    """Make directories read-only; restore them at teardown."""
    changed = []

    def make_read_only(path):
        changed.append(path)
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)

    yield make_read_only
    for path in changed:
        path.chmod(stat.S_IRWXU)


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the images were decoded again, not read from cache")

    monkeypatch.setattr(_omniglot, "_decode_zip", fail)


def cache_files(directory):
    return sorted(p.name for p in directory.glob("*.npz")) if directory.exists() else []


def assert_same_bunch(a, b):
    for key in ("data", "target", "drawer", "alphabet", "character"):
        np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------------------
# get_data_home
# ---------------------------------------------------------------------------


def test_get_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SK_MANN_DATA", raising=False)
    assert get_data_home() == tmp_path / "home" / "sk_mann_data"
    monkeypatch.setenv("SK_MANN_DATA", "")
    assert get_data_home() == tmp_path / "home" / "sk_mann_data"
    monkeypatch.setenv("SK_MANN_DATA", str(tmp_path / "env"))
    assert get_data_home() == tmp_path / "env"
    assert get_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert get_data_home(str(tmp_path / "arg")) == tmp_path / "arg"
    assert get_data_home("~/x") == tmp_path / "home" / "x"
    assert isinstance(get_data_home(), Path)
    assert not (tmp_path / "env").exists()  # not created


# ---------------------------------------------------------------------------
# Synthetic data: decoding and splits
# ---------------------------------------------------------------------------


def test_decode_full_resolution(data_home):
    bunch = fetch_omniglot(
        data_home=data_home, subset="all", split="background", image_size=105
    )
    assert isinstance(bunch, Bunch)
    assert bunch.data.shape == (8, 105 * 105)
    assert bunch.images.shape == (8, 105, 105)
    assert bunch.data.dtype == np.float32 and bunch.images.dtype == np.float32
    assert np.shares_memory(bunch.data, bunch.images)
    # Sorted by (character id, drawer), although the zip lists them reversed.
    np.testing.assert_array_equal(bunch.target, [1, 1, 2, 2, 1200, 1200, 1201, 1201])
    np.testing.assert_array_equal(bunch.drawer, [1, 2] * 4)
    assert bunch.target.dtype == np.int64 and bunch.drawer.dtype == np.int64
    assert list(bunch.alphabet) == ["Alpha"] * 4 + ["Beta"] * 4
    for image, char_id, drawer in zip(bunch.images, bunch.target, bunch.drawer):
        # Strokes become exactly 1 and the background exactly 0.
        expected = stroke_mask(char_id, drawer).astype(np.float32)
        np.testing.assert_array_equal(image, expected)
    assert "Lake" in bunch.DESCR and "background" in bunch.DESCR


def test_character_names(data_home):
    bunch = fetch_omniglot(data_home=data_home, subset="all", image_size=7)
    expected = ["character01"] * 2 + ["character02"] * 2
    assert list(bunch.character) == expected * 2


def test_decode_downscaled(data_home):
    bunch = fetch_omniglot(
        data_home=data_home, subset="all", split="background", image_size=21
    )
    assert bunch.images.shape == (8, 21, 21)
    for image, char_id, drawer in zip(bunch.images, bunch.target, bunch.drawer):
        # Block-aligned bars: area averaging over 5x5 blocks is exact.
        mask = stroke_mask(char_id, drawer)
        expected = mask.reshape(21, 5, 21, 5).mean(axis=(1, 3))
        np.testing.assert_allclose(image, expected, atol=1e-6)

    bunch = fetch_omniglot(data_home=data_home, subset="all", image_size=20)
    assert bunch.data.shape == (8, 400)
    assert np.all(np.isfinite(bunch.data))
    assert bunch.data.min() >= 0 and bunch.data.max() <= 1
    blank = (bunch.target == BLANK[0]) & (bunch.drawer == BLANK[1])
    # Max-normalised: every image with strokes has max 1, blank ones stay 0.
    np.testing.assert_array_equal(bunch.data[blank], 0)
    np.testing.assert_allclose(bunch.data[~blank].max(axis=1), 1, rtol=1e-6)
    # The background stays 0 (the bars are at most at column 50 of 105).
    assert np.all(bunch.images[:, :, -5:] == 0)


def test_paper_split_by_character_id(data_home):
    train = fetch_omniglot(data_home=data_home, subset="train", split="paper")
    test = fetch_omniglot(data_home=data_home, subset="test", split="paper")
    full = fetch_omniglot(data_home=data_home, subset="all", split="paper")
    np.testing.assert_array_equal(train.target, [1, 1, 2, 2, 1200, 1200])
    np.testing.assert_array_equal(test.target, [1201, 1201])
    np.testing.assert_array_equal(full.target, [1, 1, 2, 2, 1200, 1200, 1201, 1201])
    np.testing.assert_array_equal(full.data, np.concatenate([train.data, test.data]))
    assert "paper" in train.DESCR and "Santoro" in train.DESCR


def test_background_split_by_zip(data_home):
    train = fetch_omniglot(data_home=data_home, subset="train", split="background")
    test = fetch_omniglot(data_home=data_home, subset="test", split="background")
    np.testing.assert_array_equal(train.target, [1, 1, 2, 2])
    np.testing.assert_array_equal(test.target, [1200, 1200, 1201, 1201])
    assert set(train.alphabet) == {"Alpha"} and set(test.alphabet) == {"Beta"}


def test_return_X_y(data_home):
    X, y = fetch_omniglot(data_home=data_home, subset="test", return_X_y=True)
    bunch = fetch_omniglot(data_home=data_home, subset="test")
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_only_needed_zip_is_required(data_home):
    (data_home / "omniglot" / "images_background.zip").unlink()
    test = fetch_omniglot(data_home=data_home, subset="test", download_if_missing=False)
    assert test.target.tolist() == [1201, 1201]
    with pytest.raises(OSError, match="images_background.zip"):
        fetch_omniglot(data_home=data_home, subset="train", download_if_missing=False)


# ---------------------------------------------------------------------------
# Synthetic data: cache location and reuse
# ---------------------------------------------------------------------------


def test_cache_in_writable_data_home_is_reused(data_home, home, monkeypatch):
    cache_dir = data_home / "omniglot" / "cache"
    first = fetch_omniglot(data_home=data_home, subset="all")
    assert len(cache_files(cache_dir)) == 2  # one per zip
    assert cache_files(home / ".cache" / "sk_mann" / "omniglot") == []
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]

    forbid_decoding(monkeypatch)
    second = fetch_omniglot(data_home=data_home, subset="all")
    assert_same_bunch(first, second)
    # Another image size is another cache file, so it must be decoded.
    with pytest.raises(AssertionError, match="decoded again"):
        fetch_omniglot(data_home=data_home, subset="all", image_size=10)


def test_cache_falls_back_to_home_when_data_home_read_only(
    data_home, home, read_only, monkeypatch
):
    read_only(data_home / "omniglot")
    first = fetch_omniglot(data_home=data_home, subset="all")
    assert not (data_home / "omniglot" / "cache").exists()
    fallback = home / ".cache" / "sk_mann" / "omniglot"
    assert len(cache_files(fallback)) == 2

    forbid_decoding(monkeypatch)
    second = fetch_omniglot(data_home=data_home, subset="all")
    assert_same_bunch(first, second)


def test_cache_home_argument(data_home, home, tmp_path, monkeypatch):
    cache_home = tmp_path / "my" / "cache"
    first = fetch_omniglot(data_home=data_home, subset="all", cache_home=cache_home)
    assert len(cache_files(cache_home)) == 2
    assert not (data_home / "omniglot" / "cache").exists()
    assert cache_files(home / ".cache" / "sk_mann" / "omniglot") == []

    forbid_decoding(monkeypatch)
    second = fetch_omniglot(data_home=data_home, subset="all", cache_home=cache_home)
    assert_same_bunch(first, second)


def test_existing_cache_in_read_only_data_home_is_read(
    data_home, home, read_only, monkeypatch
):
    first = fetch_omniglot(data_home=data_home, subset="all")
    read_only(data_home / "omniglot" / "cache")
    read_only(data_home / "omniglot")
    forbid_decoding(monkeypatch)
    second = fetch_omniglot(data_home=data_home, subset="all")
    assert_same_bunch(first, second)
    assert cache_files(home / ".cache" / "sk_mann" / "omniglot") == []


def test_corrupt_cache_is_rebuilt(data_home):
    cache_dir = data_home / "omniglot" / "cache"
    first = fetch_omniglot(data_home=data_home, subset="all")
    for path in cache_dir.glob("*.npz"):
        path.write_bytes(b"not an npz")
    second = fetch_omniglot(data_home=data_home, subset="all")
    assert_same_bunch(first, second)
    for path in cache_dir.glob("*.npz"):
        assert zipfile.is_zipfile(path)


def test_changed_zip_is_decoded_again(data_home):
    first = fetch_omniglot(data_home=data_home, subset="train", split="background")
    zip_path = data_home / "omniglot" / "images_background.zip"
    content = synthetic_zip_bytes("images_background")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    blank = png_bytes(np.zeros((105, 105), dtype=bool))
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path, data in members.items():
            archive.writestr(path, blank if path.endswith(".png") else data)
    second = fetch_omniglot(data_home=data_home, subset="train", split="background")
    assert first.data.max() == 1 and second.data.max() == 0


# ---------------------------------------------------------------------------
# Missing data and download
# ---------------------------------------------------------------------------


def test_missing_zips_raise_helpful_error(tmp_path, home):
    folder = tmp_path / "omniglot"
    with pytest.raises(OSError) as excinfo:
        fetch_omniglot(data_home=tmp_path, download_if_missing=False)
    message = str(excinfo.value)
    assert str(folder) in message
    assert "images_background.zip" in message and "images_evaluation.zip" in message
    assert "SK_MANN_DATA" in message
    assert "download_if_missing=False" in message
    assert not folder.exists()

    with pytest.raises(OSError) as excinfo:
        fetch_omniglot(data_home=tmp_path, subset="test", download_if_missing=False)
    assert "images_evaluation.zip" in str(excinfo.value)
    assert "images_background.zip" not in str(excinfo.value)


def test_missing_zips_uses_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("SK_MANN_DATA", str(tmp_path / "env_home"))
    with pytest.raises(OSError, match="env_home"):
        fetch_omniglot(download_if_missing=False)


def test_download_failure_raises_oserror(tmp_path, home, monkeypatch):
    def urlopen(url, timeout=None):
        assert url.startswith("https://github.com/brendenlake/omniglot/")
        assert timeout is not None
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(OSError, match="download failed") as excinfo:
        fetch_omniglot(data_home=tmp_path, subset="test")
    assert "SK_MANN_DATA" in str(excinfo.value)
    assert list((tmp_path / "omniglot").iterdir()) == []  # no partial file


def _serve(monkeypatch, zips):
    def urlopen(url, timeout=None):
        return io.BytesIO(zips[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download(tmp_path, home, monkeypatch):
    zips = {f"{name}.zip": synthetic_zip_bytes(name) for name in SYNTHETIC}
    _serve(monkeypatch, zips)
    for name in SYNTHETIC:
        md5 = hashlib.md5(zips[f"{name}.zip"]).hexdigest()
        monkeypatch.setitem(_omniglot._ZIP_MD5, name, md5)
    bunch = fetch_omniglot(data_home=tmp_path, subset="all")
    assert bunch.target.shape == (8,)
    folder = tmp_path / "omniglot"
    for name in SYNTHETIC:
        assert (folder / f"{name}.zip").read_bytes() == zips[f"{name}.zip"]


def test_download_with_wrong_checksum(tmp_path, home, monkeypatch):
    zips = {f"{name}.zip": synthetic_zip_bytes(name) for name in SYNTHETIC}
    _serve(monkeypatch, zips)  # the real md5s do not match the synthetic zips
    with pytest.raises(OSError, match="md5"):
        fetch_omniglot(data_home=tmp_path, subset="test")
    assert list((tmp_path / "omniglot").iterdir()) == []


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (
            {"subset": "validation"},
            ["subset=", "'validation'", "'train', 'test', 'all'"],
        ),
        ({"subset": None}, ["subset=None", "'train', 'test', 'all'"]),
        ({"split": "random"}, ["split=", "'random'", "'paper', 'background'"]),
        ({"image_size": 0}, ["image_size=0", "[1, 105]"]),
        ({"image_size": 106}, ["image_size=106", "[1, 105]"]),
        ({"image_size": 20.0}, ["image_size=20.0", "integer"]),
        ({"image_size": "20"}, ["image_size='20'", "integer"]),
        ({"image_size": True}, ["image_size=True", "integer"]),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, expected):
    with pytest.raises(ValueError) as excinfo:
        fetch_omniglot(data_home=tmp_path, download_if_missing=False, **kwargs)
    for text in expected:
        assert text in str(excinfo.value)


def test_numpy_integer_image_size(data_home):
    bunch = fetch_omniglot(data_home=data_home, image_size=np.int64(8))
    assert bunch.images.shape[1:] == (8, 8)


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------


def real_data_home():
    """``SK_MANN_DATA`` if set, else ``../shared/data`` next to the repository."""
    env = os.environ.get("SK_MANN_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def real():
    """The four (split, subset) parts of the real data, default cache."""
    data_home = real_data_home()
    if not (data_home / "omniglot" / "images_background.zip").is_file():
        pytest.skip(f"Omniglot zips not found in {data_home}: set SK_MANN_DATA")
    return {
        (split, subset): fetch_omniglot(
            data_home=data_home, split=split, subset=subset, download_if_missing=False
        )
        for split in ("paper", "background")
        for subset in ("train", "test")
    }


@pytest.mark.parametrize(
    "split, subset, n_characters, first_id, last_id",
    [
        ("paper", "train", 1200, 1, 1200),
        ("paper", "test", 423, 1201, 1623),
        ("background", "train", 964, 1, 964),
        ("background", "test", 659, 965, 1623),
    ],
)
def test_real_counts(real, split, subset, n_characters, first_id, last_id):
    bunch = real[split, subset]
    n_samples = 20 * n_characters
    assert bunch.data.shape == (n_samples, 400)
    assert bunch.images.shape == (n_samples, 20, 20)
    np.testing.assert_array_equal(
        np.unique(bunch.target), np.arange(first_id, 1 + last_id)
    )
    np.testing.assert_array_equal(np.bincount(bunch.target)[first_id:], 20)
    np.testing.assert_array_equal(bunch.drawer, np.tile(np.arange(1, 21), n_characters))
    np.testing.assert_array_equal(bunch.target, np.repeat(bunch.target[::20], 20))
    assert bunch.alphabet.shape == (n_samples,)


def test_real_alphabets(real):
    assert np.unique(real["background", "train"].alphabet).size == 30
    assert np.unique(real["background", "test"].alphabet).size == 20
    train, test = real["paper", "train"], real["paper", "test"]
    assert np.unique(np.concatenate([train.alphabet, test.alphabet])).size == 50
    # Classes are unique across alphabets: one alphabet per character id.
    for bunch in (train, test):
        pairs = np.unique(np.stack([bunch.target.astype(str), bunch.alphabet]), axis=1)
        assert pairs.shape[1] == np.unique(bunch.target).size


def test_real_images(real):
    for bunch in real.values():
        assert bunch.data.dtype == np.float32
        assert bunch.data.min() >= 0 and bunch.data.max() <= 1
        np.testing.assert_allclose(bunch.data.max(axis=1), 1, rtol=1e-6)
        # Strokes (ink) are the minority of pixels.
        assert bunch.data.mean() < 0.3
        assert np.all(bunch.data.mean(axis=1) < 0.6)
