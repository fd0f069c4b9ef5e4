"""Loader for the Omniglot handwritten characters data set (Lake et al., 2015).

The two official zips, ``images_background.zip`` and ``images_evaluation.zip``,
are read directly with :mod:`zipfile` (nothing is extracted to disk). Every
105x105 black-and-white PNG is inverted so that strokes are 1 and background
is 0, downscaled with area averaging and max-normalised. The decoded arrays
of a whole zip are cached as one ``.npz`` file per (zip, image size), so only
the first call pays for decoding.

References
----------
Lake, B. M., Salakhutdinov, R., Tenenbaum, J. B. (2015). Human-level concept
learning through probabilistic program induction. Science, 350(6266),
1332-1338.

Santoro, A., Bartunov, S., Botvinick, M., Wierstra, D., Lillicrap, T. (2016).
One-shot Learning with Memory-Augmented Neural Networks. arXiv:1605.06065.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pathlib
import re
import secrets
import tempfile
import textwrap
import time
import urllib.request
import warnings
import zipfile
from numbers import Integral

import numpy as np
from PIL import Image
from sklearn.utils import Bunch

__all__ = ["fetch_omniglot", "get_data_home"]

_DATA_HOME_ENV = "SK_MANN_DATA"
_FOLDER = "omniglot"
_BACKGROUND = "images_background"
_EVALUATION = "images_evaluation"
_ZIPS = (_BACKGROUND, _EVALUATION)
_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# md5 of the official zips at _BASE_URL (checked on download only: a
# re-packed zip holding the same PNGs is accepted when placed by hand).
_ZIP_MD5 = {
    _BACKGROUND: "68d2efa1b9178cc56df9314c21c6e718",
    _EVALUATION: "6b91aef0f799c5bb55b94e3f2daec811",
}
_DOWNLOAD_TIMEOUT = 30.0
_ORIGINAL_SIZE = 105
_PAPER_N_TRAIN = 1200  # character ids 1..1200 train, 1201..1623 test
_SUBSETS = ("train", "test", "all")
_SPLITS = ("paper", "background")
# Bump when the preprocessing changes so that stale caches are ignored.
_CACHE_VERSION = 1
_CACHE_KEYS = ("images", "target", "drawer", "alphabet", "character")
_MEMBER_RE = re.compile(
    r"(?:^|/)(?P<alphabet>[^/]+)/(?P<character>character\d+)/"
    r"(?P<id>\d+)_(?P<drawer>\d+)\.png$"
)


def get_data_home(data_home: str | os.PathLike | None = None) -> pathlib.Path:
    """Return the path of the sk_mann data directory.

    The directory holds the raw data sets, e.g. ``<data_home>/omniglot/``.
    It is, in order of precedence, the ``data_home`` argument, the
    ``SK_MANN_DATA`` environment variable, or ``~/sk_mann_data``. A leading
    ``~`` is expanded. The directory is not created and need not exist.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The path to the data directory. If None, use the ``SK_MANN_DATA``
        environment variable when it is set and not empty, else
        ``~/sk_mann_data``.

    Returns
    -------
    data_home : pathlib.Path
        The path to the data directory.
    """
    if data_home is None:
        data_home = os.environ.get(_DATA_HOME_ENV) or os.path.join("~", "sk_mann_data")
    return pathlib.Path(os.fspath(data_home)).expanduser()


def fetch_omniglot(
    *,
    data_home: str | os.PathLike | None = None,
    subset: str = "train",
    split: str = "paper",
    image_size: int = 20,
    download_if_missing: bool = True,
    cache_home: str | os.PathLike | None = None,
    return_X_y: bool = False,
    verbose: bool = False,
) -> Bunch | tuple[np.ndarray, np.ndarray]:
    """Load the Omniglot handwritten characters data set (classification).

    Omniglot holds 1623 characters from 50 alphabets, each drawn once by 20
    different people, as 105x105 black-and-white images (Lake et al., 2015).
    Each character is one class; its target is the global character id
    (1..1623) of the official release, so classes are unique across
    alphabets.

    =================   ======================================
    Classes             1623 (1200 train / 423 test, "paper")
    Samples per class   20
    Samples total       32460
    Dimensionality      ``image_size ** 2``
    Features            real, between 0 and 1
    =================   ======================================

    Each image is inverted (strokes 1, background 0), downscaled to
    ``image_size x image_size`` pixels by area averaging (Pillow's ``BOX``
    filter, which keeps thin strokes visible) and divided by its maximum so
    that the brightest pixel is 1 (an image without strokes stays all 0).

    The zips are looked for in ``<data_home>/omniglot/``. The decoded images
    of each zip are cached as one ``.npz`` file per zip and image size, in
    ``cache_home`` if given, else in ``<data_home>/omniglot/cache/`` if that
    directory can be written, else in ``~/.cache/sk_mann/omniglot/``.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Data directory, see :func:`get_data_home`. The zips
        ``images_background.zip`` and ``images_evaluation.zip`` are looked
        for in its ``omniglot`` sub-folder.

    subset : {"train", "test", "all"}, default="train"
        Which part of ``split`` to load.

    split : {"paper", "background"}, default="paper"
        How characters are split into train and test.

        - ``"paper"``: characters with id 1..1200 are train and ids
          1201..1623 are test, as in Santoro et al. (2016).
        - ``"background"``: the official split of Lake et al. (2015):
          ``images_background.zip`` (964 characters of 30 alphabets) is
          train and ``images_evaluation.zip`` (659 characters of 20
          alphabets) is test.

    image_size : int, default=20
        Side length of the returned square images, between 1 and 105.
        105 keeps the original resolution.

    download_if_missing : bool, default=True
        If False, raise an ``OSError`` when a needed zip is not found locally
        instead of trying to download it from the official repository
        (https://github.com/brendenlake/omniglot).

    cache_home : str or path-like, default=None
        Directory for the decoded ``.npz`` caches. If None, use
        ``<data_home>/omniglot/cache/`` when it is writable, else
        ``~/.cache/sk_mann/omniglot/``.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    verbose : bool, default=False
        If True, print progress messages (download, decoding, cache).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (n_samples, image_size ** 2), dtype float32
            Each row is one flattened image.
        images : ndarray of shape (n_samples, image_size, image_size)
            The same values as ``data``, as images (a view of ``data``).
        target : ndarray of shape (n_samples,), dtype int64
            Global character id, 1..1623.
        drawer : ndarray of shape (n_samples,), dtype int64
            Id of the person who drew the sample, 1..20.
        alphabet : ndarray of shape (n_samples,), dtype str
            Alphabet name of each sample, e.g. ``"Latin"``.
        character : ndarray of shape (n_samples,), dtype str
            Folder name of the character inside its alphabet, e.g.
            ``"character01"``.
        DESCR : str
            Description of the data set and of the split used.

        Samples are sorted by (``target``, ``drawer``).

    (data, target) : tuple if ``return_X_y`` is True
        The ``data`` and ``target`` arrays described above.

    Raises
    ------
    ValueError
        If ``subset``, ``split`` or ``image_size`` is not valid.
    OSError
        If a needed zip is missing and cannot be downloaded.

    References
    ----------
    Lake, B. M., Salakhutdinov, R., Tenenbaum, J. B. (2015). Human-level
    concept learning through probabilistic program induction. Science,
    350(6266), 1332-1338.

    Santoro, A., Bartunov, S., Botvinick, M., Wierstra, D., Lillicrap, T.
    (2016). One-shot Learning with Memory-Augmented Neural Networks.
    arXiv:1605.06065.

    Examples
    --------
    >>> from sk_mann.datasets import fetch_omniglot
    >>> omniglot = fetch_omniglot(subset="train")  # doctest: +SKIP
    >>> omniglot.data.shape  # doctest: +SKIP
    (24000, 400)
    """
    if subset not in _SUBSETS:
        raise ValueError(f"subset must be one of {_SUBSETS}, got subset={subset!r}.")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got split={split!r}.")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, Integral)
        or not 1 <= image_size <= _ORIGINAL_SIZE
    ):
        raise ValueError(
            f"image_size must be an integer in [1, {_ORIGINAL_SIZE}], got "
            f"image_size={image_size!r}."
        )
    image_size = int(image_size)

    data_home = get_data_home(data_home)
    folder = data_home / _FOLDER
    if split == "background" and subset == "train":
        needed = (_BACKGROUND,)
    elif subset == "test":  # both splits: test characters are all evaluation
        needed = (_EVALUATION,)
    else:
        needed = _ZIPS
    _ensure_zips(folder, needed, download_if_missing, verbose)

    parts = []
    for name in needed:
        arrays = _load_zip_arrays(
            folder / f"{name}.zip", name, image_size, data_home, cache_home, verbose
        )
        if split == "paper" and subset != "all":
            ids = arrays["target"]
            keep = ids <= _PAPER_N_TRAIN if subset == "train" else ids > _PAPER_N_TRAIN
            arrays = {key: value[keep] for key, value in arrays.items()}
        parts.append(arrays)
    arrays = {key: np.concatenate([part[key] for part in parts]) for key in _CACHE_KEYS}
    order = np.lexsort((arrays["drawer"], arrays["target"]))
    arrays = {key: value[order] for key, value in arrays.items()}

    n_samples = arrays["target"].shape[0]
    data = np.ascontiguousarray(
        arrays["images"].reshape(n_samples, image_size * image_size),
        dtype=np.float32,
    )
    target = arrays["target"].astype(np.int64, copy=False)
    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        images=data.reshape(n_samples, image_size, image_size),
        target=target,
        drawer=arrays["drawer"].astype(np.int64, copy=False),
        alphabet=arrays["alphabet"],
        character=arrays["character"],
        DESCR=_describe(
            subset=subset,
            split=split,
            image_size=image_size,
            n_samples=n_samples,
            n_classes=np.unique(target).size,
            n_alphabets=np.unique(arrays["alphabet"]).size,
        ),
    )


# ---------------------------------------------------------------------------
# Locating and downloading the zips
# ---------------------------------------------------------------------------


def _ensure_zips(folder, names, download_if_missing, verbose):
    """Make sure that ``<folder>/<name>.zip`` exists for every name.

    Missing zips are downloaded when ``download_if_missing`` is True. Raise
    an ``OSError`` that explains how to place the files by hand otherwise or
    when the download fails.
    """
    missing = [name for name in names if not (folder / f"{name}.zip").is_file()]
    if not missing:
        return
    reason = "download_if_missing=False"
    if download_if_missing:
        try:
            for name in missing:
                _download_zip(name, folder, verbose)
            return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = f"the download failed: {type(exc).__name__}: {exc}"
            raise OSError(_missing_message(folder, missing, reason)) from exc
    raise OSError(_missing_message(folder, missing, reason))


def _missing_message(folder, missing, reason):
    files = ", ".join(f"{name}.zip" for name in missing)
    urls = " and ".join(f"{_BASE_URL}{name}.zip" for name in missing)
    return (
        f"Omniglot data not found: {files} missing from directory "
        f"'{folder}' ({reason}). Download {urls} and place the zip files, "
        f"not extracted, in '{folder}'; or point the data_home argument or the "
        f"{_DATA_HOME_ENV} environment variable to a directory whose "
        f"'{_FOLDER}' sub-folder holds them."
    )


def _temporary_path(path):
    """A unique temporary file name next to ``path``, for atomic writes.

    Unlike :func:`tempfile.mkstemp`, a file created with ``open(..., "xb")``
    gets the usual permissions (umask), so a cache is readable by others.
    """
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{token}.tmp")


def _download_zip(name, folder, verbose):
    """Download ``<name>.zip`` into ``folder``, atomically, checking its md5."""
    url = f"{_BASE_URL}{name}.zip"
    folder.mkdir(parents=True, exist_ok=True)
    if verbose:
        print(f"Downloading {url} to {folder} ...", flush=True)
    tmp = _temporary_path(folder / f"{name}.zip")
    try:
        md5 = hashlib.md5()
        with (
            open(tmp, "xb") as file,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response,
        ):
            while chunk := response.read(1 << 20):
                file.write(chunk)
                md5.update(chunk)
        if md5.hexdigest() != _ZIP_MD5[name]:
            raise OSError(f"{url} has md5 {md5.hexdigest()}, expected {_ZIP_MD5[name]}")
        os.replace(tmp, folder / f"{name}.zip")
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Decoding and caching
# ---------------------------------------------------------------------------


def _decode_png(png, image_size):
    """Decode one PNG into an ink image: float32, strokes 1, background 0."""
    with Image.open(io.BytesIO(png)) as image:
        gray = np.asarray(image.convert("L"), dtype=np.float32)
    ink = (255.0 - gray) / 255.0
    if ink.shape != (image_size, image_size):
        # "F" mode keeps full precision; BOX is area averaging.
        ink = np.asarray(
            Image.fromarray(ink).resize((image_size, image_size), Image.Resampling.BOX),
            dtype=np.float32,
        )
    peak = ink.max()
    if peak > 0:
        ink = ink / peak
    return ink


def _decode_zip(path, image_size, verbose=False):
    """Decode all the character images of one Omniglot zip.

    Returns a dict with the keys of ``_CACHE_KEYS``, sorted by
    (character id, drawer).
    """
    start = time.perf_counter()
    with zipfile.ZipFile(path) as archive:
        members = []
        for info in archive.infolist():
            if info.is_dir() or info.filename.startswith("__MACOSX/"):
                continue
            match = _MEMBER_RE.search(info.filename)
            if match is not None:
                members.append((info, match))
        if not members:
            raise OSError(f"{path} holds no Omniglot image (<id>_<drawer>.png).")
        if verbose:
            print(
                f"Decoding {len(members)} images of {path} "
                f"(image_size={image_size}) ...",
                flush=True,
            )
        images = np.empty((len(members), image_size, image_size), dtype=np.float32)
        for i, (info, _) in enumerate(members):
            images[i] = _decode_png(archive.read(info), image_size)
    target = np.array([int(m["id"]) for _, m in members], dtype=np.int64)
    drawer = np.array([int(m["drawer"]) for _, m in members], dtype=np.int64)
    alphabet = np.array([m["alphabet"] for _, m in members], dtype=str)
    character = np.array([m["character"] for _, m in members], dtype=str)
    order = np.lexsort((drawer, target))
    if verbose:
        print(f"Decoded in {time.perf_counter() - start:.1f} s.", flush=True)
    return {
        "images": images[order],
        "target": target[order],
        "drawer": drawer[order],
        "alphabet": alphabet[order],
        "character": character[order],
    }


def _file_digest(path):
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _default_cache_home():
    return pathlib.Path(os.path.expanduser("~")) / ".cache" / "sk_mann" / _FOLDER


def _cache_dirs(data_home, cache_home):
    """Candidate cache directories, in order of preference."""
    if cache_home is not None:
        return [pathlib.Path(os.fspath(cache_home)).expanduser()]
    return [data_home / _FOLDER / "cache", _default_cache_home()]


def _allows_writing(path):
    """Whether ``path`` (an existing directory) may be written into.

    A directory without any write permission bit is treated as read-only
    even for a user, such as root, whom the system would let write there.
    """
    mode = path.stat().st_mode
    return bool(mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


def _prepare_writable_dir(directory):
    """Create ``directory`` if needed; return whether files can be written."""
    try:
        existing = directory
        while not existing.exists():
            if existing.parent == existing:
                return False
            existing = existing.parent
        if not existing.is_dir() or not _allows_writing(existing):
            return False
        directory.mkdir(parents=True, exist_ok=True)
        if not _allows_writing(directory):
            return False
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        return False
    return True


def _read_cache(path, image_size):
    """Return the cached arrays, or None if missing, unreadable or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["version"]) != _CACHE_VERSION:
                return None
            arrays = {key: npz[key] for key in _CACHE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    n_samples = arrays["target"].shape[0]
    if arrays["images"].shape != (n_samples, image_size, image_size) or any(
        value.shape != (n_samples,) for key, value in arrays.items() if key != "images"
    ):
        return None
    return arrays


def _write_cache(path, arrays):
    """Write ``arrays`` to ``path`` atomically (temporary file + rename)."""
    tmp = _temporary_path(path)
    try:
        with open(tmp, "xb") as file:
            np.savez_compressed(file, version=np.int64(_CACHE_VERSION), **arrays)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load_zip_arrays(zip_path, name, image_size, data_home, cache_home, verbose):
    """Decoded arrays of one zip, from the cache when possible."""
    # The cache name holds a digest of the zip, so that zips of the same name
    # in different data homes never share a cache file, and a changed zip is
    # decoded again.
    digest = _file_digest(zip_path)[:16]
    filename = f"{name}_{image_size}px_{digest}_v{_CACHE_VERSION}.npz"
    candidates = _cache_dirs(data_home, cache_home)
    for directory in candidates:
        arrays = _read_cache(directory / filename, image_size)
        if arrays is not None:
            if verbose:
                print(f"Loaded cache {directory / filename}", flush=True)
            return arrays

    arrays = _decode_zip(zip_path, image_size, verbose)
    for directory in candidates:
        if not _prepare_writable_dir(directory):
            continue
        try:
            _write_cache(directory / filename, arrays)
        except OSError as exc:
            warnings.warn(
                f"Could not write the Omniglot cache {directory / filename}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        if verbose:
            print(f"Saved cache {directory / filename}", flush=True)
        break
    else:
        warnings.warn(
            "No writable directory for the Omniglot cache among "
            f"{[str(d) for d in candidates]}; the images will be decoded "
            "again next time. Pass a writable cache_home to avoid this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return arrays


def _describe(*, subset, split, image_size, n_samples, n_classes, n_alphabets):
    if split == "paper":
        split_text = (
            "the paper split (Santoro et al., 2016): characters with id "
            "1..1200 are train and ids 1201..1623 are test."
        )
    else:
        split_text = (
            "the background split (Lake et al., 2015): images_background "
            "(964 characters, 30 alphabets) is train and images_evaluation "
            "(659 characters, 20 alphabets) is test."
        )
    intro = (
        "Omniglot holds 1623 handwritten characters from 50 alphabets, each "
        "drawn once by 20 different people (32460 images of 105x105 pixels)."
    )
    loaded = (
        f"Loaded: subset={subset!r} of {split_text} It has {n_samples} "
        f"samples of {n_classes} characters from {n_alphabets} alphabets."
    )
    preprocessing = (
        "Preprocessing: inverted so that strokes are 1 and background 0, "
        f"downscaled to {image_size}x{image_size} pixels by area averaging "
        "(PIL BOX filter), each image divided by its maximum. ``target`` is "
        "the global character id (1..1623) and ``drawer`` the person "
        "(1..20); samples are sorted by (target, drawer)."
    )
    source = "Source: https://github.com/brendenlake/omniglot (MIT license)."
    paragraphs = [intro, loaded, preprocessing, source]
    body = "\n\n".join(textwrap.fill(text, width=79) for text in paragraphs)
    return f"""\
.. _omniglot_dataset:

Omniglot handwritten characters
-------------------------------

{body}

References
----------
- Lake, B. M., Salakhutdinov, R., Tenenbaum, J. B. (2015). Human-level
  concept learning through probabilistic program induction. Science,
  350(6266), 1332-1338.
- Santoro, A., Bartunov, S., Botvinick, M., Wierstra, D., Lillicrap, T.
  (2016). One-shot Learning with Memory-Augmented Neural Networks.
  arXiv:1605.06065.
"""
