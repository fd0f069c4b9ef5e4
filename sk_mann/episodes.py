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

from dataclasses import dataclass

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
    grid = F.affine_grid(torch.from_numpy(mat), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(
        src, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out = out[:, 0].numpy()
    peak = out.reshape(n, -1).max(axis=1)
    return out / np.maximum(peak, 1e-12)[:, None, None]


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
        order = np.argsort(y_idx, kind="stable")
        counts = np.bincount(y_idx, minlength=n_classes)
        self._members = np.split(order, np.cumsum(counts)[:-1])
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
        return len(self._members) * self.n_rotations

    @property
    def episode_length(self) -> int:
        """Number of steps ``T`` of an episode."""
        return self.n_way * self.n_per_class

    def sample(self, batch_size: int, rng: np.random.Generator) -> Episodes:
        """Draw ``batch_size`` independent episodes using ``rng``."""
        n_base = len(self._members)
        T = self.episode_length
        idx = np.empty((batch_size, T), dtype=np.int64)
        rot = np.zeros((batch_size, T), dtype=np.int64)
        classes = np.empty((batch_size, T), dtype=np.int64)
        codes = np.empty((batch_size, T), dtype=np.int64)
        for b in range(batch_size):
            chosen = rng.choice(self.n_classes, size=self.n_way, replace=False)
            ep_codes = rng.choice(self.scheme.n_codes, size=self.n_way, replace=False)
            pos = 0
            for c, code in zip(chosen, ep_codes):
                members = self._members[c % n_base]
                replace = len(members) < self.n_per_class
                idx[b, pos : pos + self.n_per_class] = rng.choice(
                    members, size=self.n_per_class, replace=replace
                )
                rot[b, pos : pos + self.n_per_class] = c // n_base
                classes[b, pos : pos + self.n_per_class] = c
                codes[b, pos : pos + self.n_per_class] = code
                pos += self.n_per_class
            perm = rng.permutation(T)
            idx[b], rot[b], classes[b], codes[b] = (
                idx[b, perm],
                rot[b, perm],
                classes[b, perm],
                codes[b, perm],
            )
        x = self.X[idx.ravel()]
        if self.image_shape is not None and (self.n_rotations > 1 or self.augment):
            x = self._transform(x, rot.ravel(), rng)
        prev = np.concatenate([np.full((batch_size, 1), -1), codes[:, :-1]], axis=1)
        return Episodes(
            x=x.reshape(batch_size, T, -1),
            label_in=self.scheme.encode(prev),
            codes=codes,
            targets=self.scheme.digits(codes),
            instance=instance_index(classes),
            classes=classes,
        )

    def _transform(
        self, x: np.ndarray, rot: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Rotate by ``rot * 90`` degrees, then jitter if ``augment``."""
        n = x.shape[0]
        images = x.reshape(n, *self.image_shape)
        for k in range(1, self.n_rotations):
            sel = rot == k
            if sel.any():
                images[sel] = np.rot90(images[sel], k=k, axes=(1, 2))
        if self.augment:
            side = np.array(self.image_shape[::-1], dtype=np.float64)
            shifts = rng.uniform(-1.0, 1.0, size=(n, 2)) * self.max_shift * side
            angles = rng.uniform(-self.max_rotation, self.max_rotation, size=n)
            images = augment_images(images, shifts, angles)
        return images.reshape(n, -1)
