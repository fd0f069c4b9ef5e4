"""Episode sampling for meta-learning, following the paper's protocol.

An episode draws ``n_way`` classes without replacement, ``n_per_class`` samples of
each, shuffles the ``T = n_way * n_per_class`` steps and assigns each class a
label code at random (so labels cannot be learned into the weights). The network
sees ``(x_t, y_{t-1})``: the label input at step ``t`` is the code of step
``t-1``, a null (all-zero) label at ``t = 1``.

For images, rotations by 90, 180 and 270 degrees can make new classes, and small
random shifts and rotations of each sample can be applied (section 4.1 of
Santoro et al. 2016; the reproductions used +-10 px shifts and +-11.25 degrees at
105x105, which at 20x20 is +-1.9 px).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .labels import LabelScheme, make_label_scheme

__all__ = ["Episodes", "EpisodeSampler", "augment_images", "instance_index"]

#: Shift of the reproductions (10 px at 105x105) as a fraction of the image side.
DEFAULT_MAX_SHIFT = 10.0 / 105.0
#: Rotation jitter of the reproductions, in degrees.
DEFAULT_MAX_ROTATION = 11.25


@dataclass
class Episodes:
    """A batch of episodes, all arrays with leading shape ``(batch, T)``.

    Attributes
    ----------
    x : ndarray of shape (batch, T, n_features), float32
    label_in : ndarray of shape (batch, T, scheme.width), float32
        Encoded label of the previous step (zeros at ``t = 0``).
    codes : ndarray of shape (batch, T), int64
        Label code to predict at each step.
    targets : ndarray of shape (batch, T, scheme.n_groups), int64
        Digits of ``codes`` (the training targets).
    instance : ndarray of shape (batch, T), int64
        1 for the first appearance of the step's class in its episode, 2 for the
        second, and so on.
    classes : ndarray of shape (batch, T), int64
        The (possibly rotated, "virtual") class of each step.
    """

    x: np.ndarray
    label_in: np.ndarray
    codes: np.ndarray
    targets: np.ndarray
    instance: np.ndarray
    classes: np.ndarray

    def head(self, n: int) -> Episodes:
        """The first ``n`` episodes of the batch."""
        return Episodes(*(getattr(self, f.name)[:n] for f in fields(self)))


def instance_index(classes: np.ndarray) -> np.ndarray:
    """1-based count of earlier appearances of each step's class, per episode.

    Parameters
    ----------
    classes : ndarray of shape (batch, T)

    Returns
    -------
    ndarray of shape (batch, T), int64

    Examples
    --------
    >>> instance_index(np.array([[3, 1, 3, 3, 1]]))
    array([[1, 1, 2, 3, 2]])
    """
    classes = np.asarray(classes)
    same = classes[:, :, None] == classes[:, None, :]  # (B, T, T)
    earlier = np.tril(same, k=0)
    return earlier.sum(axis=2).astype(np.int64)


def augment_images(
    images: np.ndarray,
    shifts: np.ndarray,
    angles: np.ndarray,
) -> np.ndarray:
    """Shift and rotate each image (bilinear, zero padding) and max-normalise it.

    Parameters
    ----------
    images : ndarray of shape (n, height, width)
    shifts : ndarray of shape (n, 2)
        Translation ``(dx, dy)`` of each image in pixels (positive = right, down).
    angles : ndarray of shape (n,)
        Rotation of each image in degrees (counter-clockwise on screen).

    Returns
    -------
    ndarray of shape (n, height, width), float32
    """
    n, h, w = images.shape
    theta_rad = np.deg2rad(np.asarray(angles, dtype=np.float64))
    cos, sin = np.cos(theta_rad), np.sin(theta_rad)
    # affine_grid maps output coordinates to input coordinates (normalised to
    # [-1, 1]); the inverse of "rotate by a then shift by s" is applied here.
    tx = 2.0 * shifts[:, 0] / w
    ty = 2.0 * shifts[:, 1] / h
    mat = np.empty((n, 2, 3), dtype=np.float32)
    mat[:, 0, 0] = cos
    mat[:, 0, 1] = -sin
    mat[:, 1, 0] = sin
    mat[:, 1, 1] = cos
    mat[:, 0, 2] = -(cos * tx - sin * ty)
    mat[:, 1, 2] = -(sin * tx + cos * ty)
    src = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    grid = _affine_grid(torch.from_numpy(mat), h, w)
    out = F.grid_sample(
        src, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out = out[:, 0].numpy()
    peak = out.reshape(n, -1).max(axis=1)
    return out / np.maximum(peak, 1e-12)[:, None, None]


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, [n, 1, h, w], align_corners=False)`` as one matmul.

    torch's version multiplies each image's ``(h * w, 3)`` base grid by its
    ``theta`` in a batched product of many tiny matrices (3.3 ms for a batch of
    800 images at 20 x 20, a third of the sampling time); here all thetas
    multiply the one base grid at once. Equal to float32 rounding (tested).
    """
    n = theta.shape[0]
    xs = (torch.arange(w, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=theta.dtype) * 2 + 1) / h - 1
    base = torch.stack(
        [xs.repeat(h), ys.repeat_interleave(w), torch.ones(h * w, dtype=theta.dtype)]
    )  # (3, h * w): pixel centres in normalised coordinates, row-major
    grid = theta.reshape(n * 2, 3) @ base  # (n * 2, h * w)
    return grid.reshape(n, 2, h, w).permute(0, 2, 3, 1)


class EpisodeSampler:
    """Draw batches of episodes from labelled data, following the paper's protocol.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Class of each sample (any hashable values).
    n_way : int, default=5
        Classes per episode.
    n_per_class : int, default=10
        Samples of each class per episode (drawn without replacement when the
        class has enough samples, else with replacement).
    labels : {"onehot", "string"}, default="onehot"
    image_shape : tuple of int or None, default=None
        ``(height, width)`` when rows of ``X`` are images; needed for the two
        options below.
    rotate_classes : bool, default=False
        Rotations by 90, 180, 270 degrees of each class are new classes.
    augment : bool, default=False
        Apply a random shift of up to ``max_shift * side`` pixels and a random
        rotation of up to ``max_rotation`` degrees to every sample.
    max_shift : float, default=10/105
    max_rotation : float, default=11.25
    scheme : LabelScheme or None, default=None
        Label codes to draw from; by default ``make_label_scheme(labels, n_way)``.
        Pass one with more codes than ``n_way`` to train a network whose label
        space is larger than the classes of one episode.
    """

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        n_way: int = 5,
        n_per_class: int = 10,
        labels: str = "onehot",
        image_shape: tuple[int, int] | None = None,
        rotate_classes: bool = False,
        augment: bool = False,
        max_shift: float = DEFAULT_MAX_SHIFT,
        max_rotation: float = DEFAULT_MAX_ROTATION,
        scheme: LabelScheme | None = None,
    ) -> None:
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.asarray(y)
        self.class_values, y_idx = np.unique(y, return_inverse=True)
        n_classes = len(self.class_values)
        self.n_rotations = 4 if rotate_classes else 1
        if n_way > n_classes * self.n_rotations:
            raise ValueError(
                f"n_way={n_way} classes per episode, but the data has only "
                f"{n_classes * self.n_rotations} classes; lower n_way or add classes."
            )
        if (rotate_classes or augment) and image_shape is None:
            raise ValueError(
                "rotate_classes and augment need image_shape=(height, width)."
            )
        if rotate_classes and image_shape[0] != image_shape[1]:
            raise ValueError(
                "rotate_classes=True needs square images, got "
                f"image_shape={image_shape} (a 90-degree turn swaps height and "
                "width); set rotate_classes=False."
            )
        if image_shape is not None and int(np.prod(image_shape)) != self.X.shape[1]:
            raise ValueError(
                f"image_shape={image_shape} does not match {self.X.shape[1]} features."
            )
        # The rows of class c are _order[_starts[c] : _starts[c] + _sizes[c]].
        self._order = np.argsort(y_idx, kind="stable")
        self._sizes = np.bincount(y_idx, minlength=n_classes)
        self._starts = np.cumsum(self._sizes) - self._sizes
        self.n_way = n_way
        self.n_per_class = n_per_class
        self.scheme: LabelScheme = scheme or make_label_scheme(labels, n_way)
        if n_way > self.scheme.n_codes:
            raise ValueError(
                f"n_way={n_way} classes per episode but only {self.scheme.n_codes} "
                "label codes; use more codes (labels='string') or lower n_way."
            )
        self.image_shape = image_shape
        self.augment = augment
        self.max_shift = max_shift
        self.max_rotation = max_rotation

    @property
    def n_classes(self) -> int:
        """Number of classes episodes are drawn from (rotations included)."""
        return len(self._sizes) * self.n_rotations

    @property
    def episode_length(self) -> int:
        """Number of steps ``T`` of an episode."""
        return self.n_way * self.n_per_class

    def sample(self, batch_size: int, rng: np.random.Generator) -> Episodes:
        """Draw ``batch_size`` independent episodes using ``rng``."""
        B, W, K = batch_size, self.n_way, self.n_per_class
        T = self.episode_length
        n_base = len(self._sizes)
        # Classes and codes: W distinct of each per episode (uniform, in order).
        chosen = _distinct(rng, np.full(B, self.n_classes), W)  # (B, W)
        ep_codes = _distinct(rng, np.full(B, self.scheme.n_codes), W)
        # K samples of each chosen class: without replacement when it has K.
        base = (chosen % n_base).ravel()  # (B * W,)
        sizes = self._sizes[base]
        pos = np.empty((B * W, K), dtype=np.int64)
        small = sizes < K
        if small.any():  # too few samples: K with replacement
            pos[small] = rng.integers(0, sizes[small, None], (int(small.sum()), K))
        pos[~small] = _distinct(rng, sizes[~small], K)  # draws nothing when empty
        idx = self._order[self._starts[base][:, None] + pos].reshape(B, T)
        # Steps of each class side by side, then shuffled per episode.
        perm = np.argsort(rng.random((B, T)), axis=1)
        idx = np.take_along_axis(idx, perm, axis=1)
        classes = np.take_along_axis(np.repeat(chosen, K, axis=1), perm, axis=1)
        codes = np.take_along_axis(np.repeat(ep_codes, K, axis=1), perm, axis=1)
        rot = classes // n_base
        x = self._gather(idx.ravel(), rot.ravel())
        if self.augment:
            x = self._jitter(x, rng)
        prev = np.concatenate([np.full((B, 1), -1), codes[:, :-1]], axis=1)
        return Episodes(
            x=x.reshape(B, T, -1),
            label_in=self.scheme.encode(prev),
            codes=codes,
            targets=self.scheme.digits(codes),
            instance=instance_index(classes),
            classes=classes,
        )

    def _gather(self, idx: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of ``X``, each turned by ``rot * 90`` degrees (``np.rot90``).

        The rows of each turn are gathered and turned together: one index per
        pixel (an ``(n, n_features)`` index array) made the gather ~10x slower.
        """
        if self.n_rotations == 1:
            return self.X[idx]
        n, (h, w) = len(idx), self.image_shape
        out = np.empty((n, self.X.shape[1]), dtype=self.X.dtype)
        for k in range(self.n_rotations):
            sel = np.flatnonzero(rot == k)
            if sel.size == 0:  # no class of this batch turned by k quarters
                continue
            images = self.X[idx[sel]].reshape(len(sel), h, w)
            out[sel] = np.rot90(images, k=k, axes=(1, 2)).reshape(len(sel), -1)
        return out

    def _jitter(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The random shift and rotation of every row (``augment``)."""
        n = x.shape[0]
        side = np.array(self.image_shape[::-1], dtype=np.float64)
        shifts = rng.uniform(-1.0, 1.0, size=(n, 2)) * self.max_shift * side
        angles = rng.uniform(-self.max_rotation, self.max_rotation, size=n)
        images = augment_images(x.reshape(n, *self.image_shape), shifts, angles)
        return images.reshape(n, -1)


def _distinct(rng: np.random.Generator, n: np.ndarray, k: int) -> np.ndarray:
    """For each ``n[i] >= k``: ``k`` distinct integers of ``[0, n[i])``, in order.

    Each row is uniform over the ordered ``k``-subsets, as ``rng.choice(n[i],
    k, replace=False)`` (whose per-call cost would dominate a batch of
    episodes). Rows with few values take the ``k`` smallest of ``n[i]``
    uniform keys; rows with many, ``k`` independent draws, drawn again while
    they repeat a value (rejection keeps the law uniform, and the memory
    independent of ``n``).
    """
    n = np.asarray(n, dtype=np.int64)
    out = np.empty((len(n), k), dtype=np.int64)
    few = n <= 8 * k
    if few.any():
        width = int(n[few].max())
        keys = rng.random((int(few.sum()), width))
        keys[np.arange(width) >= n[few, None]] = 2.0  # beyond n[i]: never first
        out[few] = np.argsort(keys, axis=1)[:, :k]
    rows = np.flatnonzero(~few)
    while len(rows):
        out[rows] = rng.integers(0, n[rows, None], (len(rows), k))
        ordered = np.sort(out[rows], axis=1)
        rows = rows[(ordered[:, 1:] == ordered[:, :-1]).any(axis=1)]
    return out
