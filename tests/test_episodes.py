"""Tests for :mod:`sk_mann.episodes`: the paper's episode protocol and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose, assert_array_equal

from sk_mann.episodes import (
    EpisodeSampler,
    _affine_grid,
    _distinct,
    augment_images,
    instance_index,
)
from sk_mann.labels import LabelScheme, make_label_scheme

N_CLASSES, N_MEMBERS, N_FEATURES = 8, 6, 4


@pytest.fixture(scope="module")
def data():
    """8 classes x 6 samples; every row is unique and names its own index."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(N_CLASSES), N_MEMBERS)
    X = np.column_stack([np.arange(len(y)), y, rng.random((len(y), 2))]).astype(
        np.float32
    )
    return X, y


def row_index(x):
    """Index in ``data`` of each sampled row (column 0 holds it)."""
    return x[..., 0].astype(np.int64)


# ---------------------------------------------------------------------------
# instance_index.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "classes, expected",
    [
        ([[3, 1, 3, 3, 1]], [[1, 1, 2, 3, 2]]),
        ([[0, 0, 0]], [[1, 2, 3]]),
        ([[0, 1, 2]], [[1, 1, 1]]),
        ([[5, 5], [2, 7]], [[1, 2], [1, 1]]),
        ([[1, 2, 1, 2, 2, 1]], [[1, 1, 2, 2, 3, 3]]),
    ],
)
def test_instance_index_hand_cases(classes, expected):
    got = instance_index(np.array(classes))
    assert got.dtype == np.int64
    assert_array_equal(got, expected)


def test_instance_index_matches_a_loop():
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 4, size=(5, 12))
    want = np.zeros_like(classes)
    for b in range(5):
        seen = {}
        for t in range(12):
            seen[classes[b, t]] = seen.get(classes[b, t], 0) + 1
            want[b, t] = seen[classes[b, t]]
    assert_array_equal(instance_index(classes), want)


# ---------------------------------------------------------------------------
# EpisodeSampler: shapes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, width, n_groups", [("onehot", 3, 1), ("string", 25, 5)]
)
def test_sample_shapes_and_dtypes(data, labels, width, n_groups):
    X, y = data
    s = EpisodeSampler(X, y, n_way=3, n_per_class=4, labels=labels)
    assert s.episode_length == 12
    assert s.n_classes == N_CLASSES
    ep = s.sample(5, np.random.default_rng(0))
    assert ep.x.shape == (5, 12, N_FEATURES) and ep.x.dtype == np.float32
    assert ep.label_in.shape == (5, 12, width) and ep.label_in.dtype == np.float32
    assert ep.codes.shape == (5, 12) and ep.codes.dtype == np.int64
    assert ep.targets.shape == (5, 12, n_groups) and ep.targets.dtype == np.int64
    assert ep.instance.shape == (5, 12)
    assert ep.classes.shape == (5, 12)


# ---------------------------------------------------------------------------
# EpisodeSampler: values.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_way, n_per_class", [(3, 4), (5, 2), (8, 6), (2, 1)])
def test_each_episode_has_n_way_classes_n_per_class_times(data, n_way, n_per_class):
    X, y = data
    s = EpisodeSampler(X, y, n_way=n_way, n_per_class=n_per_class)
    ep = s.sample(20, np.random.default_rng(2))
    for b in range(20):
        classes, counts = np.unique(ep.classes[b], return_counts=True)
        assert len(classes) == n_way  # drawn without replacement
        assert_array_equal(counts, n_per_class)
        assert_array_equal(ep.instance[b], instance_index(ep.classes[b : b + 1])[0])


def test_x_rows_belong_to_the_step_class(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=4, n_per_class=3)
    ep = s.sample(20, np.random.default_rng(3))
    idx = row_index(ep.x)
    assert_array_equal(y[idx], ep.classes)
    assert_array_equal(ep.x, X[idx])


def test_samples_of_a_class_are_drawn_without_replacement(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=3, n_per_class=N_MEMBERS)
    ep = s.sample(20, np.random.default_rng(4))
    for b in range(20):
        assert len(np.unique(row_index(ep.x[b]))) == 3 * N_MEMBERS


def test_samples_with_replacement_when_a_class_is_too_small(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=2, n_per_class=N_MEMBERS + 3)
    ep = s.sample(4, np.random.default_rng(5))
    assert_array_equal(y[row_index(ep.x)], ep.classes)


def test_classes_of_unequal_sizes_mix_both_draws():
    """Big classes without replacement, small ones with, in one batch."""
    sizes = [2, 7, 3, 9, 5]
    y = np.repeat(np.arange(5), sizes)
    X = np.arange(len(y), dtype=np.float32)[:, None] + np.zeros((1, 3), np.float32)
    s = EpisodeSampler(X, y, n_way=5, n_per_class=5)
    ep = s.sample(40, np.random.default_rng(11))
    rows = ep.x[..., 0].astype(int)
    assert_array_equal(y[rows], ep.classes)
    for b in range(40):
        for c in (1, 3, 4):  # >= 5 samples: five distinct rows
            assert len(np.unique(rows[b][ep.classes[b] == c])) == 5
    # The small classes' draws cover their rows (with replacement).
    assert set(rows[ep.classes == 0].tolist()) == {0, 1}


@pytest.mark.parametrize("n, k", [(5, 5), (7, 3), (4800, 5), (40, 2)])
def test_distinct_draws_are_uniform_ordered_subsets(n, k):
    rows = 20000
    out = _distinct(np.random.default_rng(n + k), np.full(rows, n), k)
    assert out.shape == (rows, k) and out.min() >= 0 and out.max() < n
    assert all(len(set(r)) == k for r in out[:2000].tolist())
    # Every value equally likely in every position (chi-square-like bound).
    for j in range(k):
        counts = np.bincount(out[:, j], minlength=n)
        expected = rows / n
        if n <= 40:
            assert np.abs(counts - expected).max() < 6 * np.sqrt(expected)
        else:  # many values: compare halves of the range instead
            assert abs(counts[: n // 2].sum() - rows / 2) < 6 * np.sqrt(rows / 4)


def test_distinct_rows_of_different_sizes():
    n = np.array([3, 20, 10**9, 3, 50, 10**9])  # both branches, mixed
    out = _distinct(np.random.default_rng(0), np.tile(n, 500), 3)
    assert np.all(out < np.tile(n, 500)[:, None]) and out.min() >= 0
    assert all(len(set(r)) == 3 for r in out.tolist())
    assert out[np.tile(n, 500) == 10**9].max() > 10**8  # the whole range


def test_a_very_large_class_is_sampled_without_a_table_of_its_size():
    """One class of 200,000 rows beside small ones: fast, and correct."""
    sizes = [200_000, 4, 12, 30]
    y = np.repeat(np.arange(4), sizes)
    X = np.arange(len(y), dtype=np.float32)[:, None]
    s = EpisodeSampler(X, y, n_way=4, n_per_class=6)
    ep = s.sample(64, np.random.default_rng(12))
    rows = ep.x[..., 0].astype(int)
    assert_array_equal(y[rows], ep.classes)
    for b in range(64):
        for c in (0, 2, 3):
            assert len(np.unique(rows[b][ep.classes[b] == c])) == 6
    assert rows[ep.classes == 0].max() > 1000  # not just the class's first rows


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_codes_are_a_bijection_of_the_classes_in_an_episode(data, labels):
    X, y = data
    s = EpisodeSampler(X, y, n_way=5, n_per_class=3, labels=labels)
    ep = s.sample(30, np.random.default_rng(6))
    for b in range(30):
        pairs = set(zip(ep.classes[b].tolist(), ep.codes[b].tolist()))
        assert len(pairs) == 5  # same class -> same code
        assert (
            len({code for _, code in pairs}) == 5
        )  # distinct classes -> distinct codes
    assert ep.codes.min() >= 0 and ep.codes.max() < s.scheme.n_codes


@pytest.mark.parametrize("labels", ["onehot", "string"])
def test_label_input_is_the_previous_code(data, labels):
    X, y = data
    s = EpisodeSampler(X, y, n_way=3, n_per_class=4, labels=labels)
    ep = s.sample(6, np.random.default_rng(7))
    assert_array_equal(ep.label_in[:, 0], 0.0)
    scheme = make_label_scheme(labels, 3)
    assert_array_equal(ep.label_in[:, 1:], scheme.encode(ep.codes[:, :-1]))
    assert_array_equal(ep.targets, scheme.digits(ep.codes))


def test_labels_are_reshuffled_between_episodes(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=N_CLASSES, n_per_class=1)
    ep = s.sample(200, np.random.default_rng(8))
    for c in range(N_CLASSES):
        codes = ep.codes[ep.classes == c]
        counts = np.bincount(codes, minlength=N_CLASSES)
        assert np.all(counts > 0), (c, counts)  # every code over 200 episodes
        assert counts.max() < 60  # roughly uniform (expected 25)


def test_step_order_is_shuffled(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=4, n_per_class=5)
    ep = s.sample(50, np.random.default_rng(9))
    first = ep.instance[:, :5]
    assert not np.all(first == np.arange(1, 6))  # not grouped by class
    assert (ep.instance[:, 0] == 1).all()
    assert len({tuple(row) for row in ep.instance.tolist()}) > 1


def test_sampling_is_reproducible_with_a_seeded_rng(data):
    X, y = data
    s = EpisodeSampler(X, y, n_way=3, n_per_class=4)
    a = s.sample(4, np.random.default_rng(42))
    b = s.sample(4, np.random.default_rng(42))
    c = s.sample(4, np.random.default_rng(43))
    for field in ("x", "label_in", "codes", "targets", "instance", "classes"):
        assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)


def test_sampler_does_not_modify_its_data(data):
    X, y = data
    X0 = X.copy()
    s = EpisodeSampler(X, y, n_way=3, n_per_class=2)
    s.sample(3, np.random.default_rng(0))
    assert_array_equal(X, X0)


def test_any_hashable_class_values(data):
    X, y = data
    names = np.array([f"char{c}" for c in y])
    s = EpisodeSampler(X, names, n_way=3, n_per_class=2)
    ep = s.sample(5, np.random.default_rng(0))
    assert_array_equal(s.class_values[ep.classes], names[row_index(ep.x)])


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


def test_n_way_larger_than_the_classes_is_an_error(data):
    X, y = data
    with pytest.raises(ValueError, match="n_way"):
        EpisodeSampler(X, y, n_way=N_CLASSES + 1)


def test_rotations_count_as_classes_for_n_way():
    X = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 2)
    s = EpisodeSampler(
        X, y, n_way=12, n_per_class=1, image_shape=(2, 2), rotate_classes=True
    )
    assert s.n_classes == 12
    with pytest.raises(ValueError):
        EpisodeSampler(X, y, n_way=13, image_shape=(2, 2), rotate_classes=True)


@pytest.mark.parametrize("option", ["augment", "rotate_classes"])
def test_image_options_need_image_shape(data, option):
    X, y = data
    with pytest.raises(ValueError, match="image_shape"):
        EpisodeSampler(X, y, n_way=3, **{option: True})


def test_image_shape_must_match_the_features(data):
    X, y = data
    with pytest.raises(ValueError, match="image_shape"):
        EpisodeSampler(X, y, n_way=3, image_shape=(3, 3))


def test_rotate_classes_needs_square_images():
    X = np.random.default_rng(0).random((8, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 2)
    with pytest.raises(ValueError, match="image_shape"):
        s = EpisodeSampler(
            X, y, n_way=8, n_per_class=1, image_shape=(2, 3), rotate_classes=True
        )
        s.sample(2, np.random.default_rng(0))  # today: a broadcasting ValueError


def test_n_way_larger_than_the_codes_is_an_error(data):
    X, y = data
    with pytest.raises(ValueError, match="codes"):
        EpisodeSampler(X, y, n_way=5, scheme=LabelScheme(1, 4))


def test_a_scheme_with_more_codes_than_classes(data):
    """Codes come from the whole scheme, e.g. 8 one-hot codes for 3-way episodes."""
    X, y = data
    s = EpisodeSampler(X, y, n_way=3, n_per_class=2, scheme=LabelScheme(1, 8))
    assert s.scheme == LabelScheme(1, 8)
    ep = s.sample(100, np.random.default_rng(10))
    assert ep.label_in.shape == (100, 6, 8)
    assert set(np.unique(ep.codes).tolist()) == set(range(8))
    for b in range(100):
        assert len(np.unique(ep.codes[b])) == 3
    assert_array_equal(ep.label_in[:, 1:], LabelScheme(1, 8).encode(ep.codes[:, :-1]))


# ---------------------------------------------------------------------------
# Class rotations and augmentation.
# ---------------------------------------------------------------------------

SIDE = 7


@pytest.fixture(scope="module")
def images():
    """3 classes x 2 samples of random, asymmetric 7x7 images (values in (0, 1])."""
    rng = np.random.default_rng(1)
    imgs = rng.random((6, SIDE, SIDE)).astype(np.float32) + 0.01
    imgs /= imgs.reshape(6, -1).max(axis=1)[:, None, None]
    return imgs, np.repeat(np.arange(3), 2)


def test_rotated_classes_are_rot90_of_the_originals(images):
    imgs, y = images
    s = EpisodeSampler(
        imgs.reshape(6, -1),
        y,
        n_way=6,
        n_per_class=2,
        image_shape=(SIDE, SIDE),
        rotate_classes=True,
    )
    ep = s.sample(20, np.random.default_rng(2))
    assert ep.classes.max() >= 3  # rotated classes appear
    seen_k = set()
    for b in range(20):
        for t in range(ep.x.shape[1]):
            c = ep.classes[b, t]
            base, k = c % 3, c // 3
            got = ep.x[b, t].reshape(SIDE, SIDE)
            members = imgs[y == base]
            matches = [np.array_equal(got, np.rot90(m, k=k)) for m in members]
            assert any(matches), (c, k)
            seen_k.add(int(k))
    assert seen_k == {0, 1, 2, 3}


def test_rotated_classes_when_a_batch_lacks_some_quarter_turns(images):
    """One episode of 2 classes cannot hold all four turns: no crash (a bug of
    the per-turn gather, found by a 1-episode-per-worker training run)."""
    imgs, y = images
    s = EpisodeSampler(
        imgs.reshape(6, -1),
        y,
        n_way=2,
        n_per_class=2,
        image_shape=(SIDE, SIDE),
        rotate_classes=True,
    )
    for seed in range(20):
        ep = s.sample(1, np.random.default_rng(seed))
        assert len(set((ep.classes // 3).ravel().tolist())) < 4
        for t in range(ep.x.shape[1]):
            c = ep.classes[0, t]
            members = imgs[y == c % 3]
            got = ep.x[0, t].reshape(SIDE, SIDE)
            assert any(np.array_equal(got, np.rot90(m, k=c // 3)) for m in members)


def test_augment_false_leaves_images_unchanged(images):
    imgs, y = images
    s = EpisodeSampler(
        imgs.reshape(6, -1), y, n_way=3, n_per_class=2, image_shape=(SIDE, SIDE)
    )
    ep = s.sample(10, np.random.default_rng(3))
    flat = imgs.reshape(6, -1)
    for row in ep.x.reshape(-1, SIDE * SIDE):
        assert any(np.array_equal(row, f) for f in flat)


def test_augment_true_really_changes_the_images(images):
    """Regression: one reproduction computed the jitter and never applied it."""
    imgs, y = images
    s = EpisodeSampler(
        imgs.reshape(6, -1),
        y,
        n_way=3,
        n_per_class=2,
        image_shape=(SIDE, SIDE),
        augment=True,
        max_shift=0.3,
        max_rotation=20.0,
    )
    ep = s.sample(10, np.random.default_rng(4))
    flat = imgs.reshape(6, -1)
    rows = ep.x.reshape(-1, SIDE * SIDE)
    for row in rows:
        assert min(np.abs(row - f).max() for f in flat) > 1e-3
    assert_allclose(rows.max(axis=1), 1.0, rtol=1e-6)  # max-normalised


def test_sampler_augmentation_stays_within_its_bounds():
    """A centred dot moves by at most max_shift * side pixels."""
    img = np.zeros((21, 21), dtype=np.float32)
    img[10, 10] = 1.0
    X = np.stack([img.ravel()] * 4)
    s = EpisodeSampler(
        X,
        np.array([0, 0, 1, 1]),
        n_way=2,
        n_per_class=2,
        image_shape=(21, 21),
        augment=True,
        max_shift=0.1,
        max_rotation=0.0,
    )
    ep = s.sample(30, np.random.default_rng(5))
    yy, xx = np.mgrid[:21, :21]
    ims = ep.x.reshape(-1, 21, 21)
    cx = (ims * xx).sum((1, 2)) / ims.sum((1, 2)) - 10
    cy = (ims * yy).sum((1, 2)) / ims.sum((1, 2)) - 10
    assert np.all(np.abs(cx) <= 2.1 + 1e-6) and np.all(np.abs(cy) <= 2.1 + 1e-6)
    assert np.abs(cx).max() > 0.5 and np.abs(cy).max() > 0.5


# ---------------------------------------------------------------------------
# augment_images.
# ---------------------------------------------------------------------------


def centre_of_mass(img):
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    return (img * xx).sum() / img.sum(), (img * yy).sum() / img.sum()


@pytest.mark.parametrize(
    "shift, moved",
    [((2, 0), (2, 0)), ((0, 3), (0, 3)), ((-1, -2), (-1, -2)), ((1.5, 0), (1.5, 0))],
)
def test_augment_shift_moves_the_centre_of_mass(shift, moved):
    img = np.zeros((1, 11, 11), dtype=np.float32)
    img[0, 5, 5] = 1.0
    out = augment_images(img, np.array([shift], dtype=np.float64), np.zeros(1))
    cx, cy = centre_of_mass(out[0])
    assert_allclose([cx - 5, cy - 5], moved, atol=0.05)


def test_augment_integer_shift_is_a_roll():
    rng = np.random.default_rng(6)
    img = np.zeros((1, 9, 9), dtype=np.float32)
    img[0, 3:6, 2:5] = rng.random((3, 3)) + 0.1
    out = augment_images(img, np.array([[2.0, -1.0]]), np.zeros(1))
    want = np.roll(np.roll(img[0], 2, axis=1), -1, axis=0)
    assert_allclose(out[0], want / want.max(), atol=1e-6)


def asymmetric_image():
    img = np.zeros((9, 9), dtype=np.float32)
    img[1, 2] = 1.0
    img[1, 3] = 0.5
    img[5, 2] = 0.7
    img[6, 7] = 0.3
    return img


@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2), (270.0, 3)])
def test_augment_rotation_is_counter_clockwise_like_rot90(angle, k):
    """Counter-clockwise on screen, as documented: ``np.rot90``'s direction."""
    img = asymmetric_image()
    out = augment_images(img[None], np.zeros((1, 2)), np.array([angle]))
    assert_allclose(out[0], np.rot90(img, k=k), atol=1e-5)
    if k % 2:  # the other direction gives another image
        assert not np.allclose(out[0], np.rot90(img, k=-k), atol=1e-2)


def test_augment_rotates_then_shifts():
    img = asymmetric_image()
    out = augment_images(img[None], np.array([[1.0, 0.0]]), np.array([90.0]))
    assert_allclose(out[0], np.roll(np.rot90(img), 1, axis=1), atol=1e-5)


def test_augment_zero_jitter_only_normalises():
    rng = np.random.default_rng(7)
    imgs = (
        rng.random((3, 6, 6)).astype(np.float32)
        * np.array([2.0, 0.5, 7.0])[:, None, None]
    )
    out = augment_images(imgs, np.zeros((3, 2)), np.zeros(3))
    assert out.shape == (3, 6, 6) and out.dtype == np.float32
    want = imgs / imgs.reshape(3, -1).max(1)[:, None, None]
    assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_augment_outputs_are_max_normalised():
    rng = np.random.default_rng(8)
    imgs = rng.random((5, 8, 8)).astype(np.float32) * 3.0
    shifts = rng.uniform(-2, 2, (5, 2))
    angles = rng.uniform(-15, 15, 5)
    out = augment_images(imgs, shifts, angles)
    assert_allclose(out.reshape(5, -1).max(1), 1.0, rtol=1e-6)
    assert out.min() >= 0.0


@pytest.mark.parametrize("n, h, w", [(1, 1, 1), (3, 5, 7), (64, 20, 20), (2, 105, 105)])
def test_affine_grid_matches_torch(n, h, w):
    """The one-matmul grid is torch's ``affine_grid`` (align_corners=False)."""
    theta = torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(n + h))
    want = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    got = _affine_grid(theta, h, w)
    assert got.shape == want.shape == (n, h, w, 2)
    assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=2e-6)


def test_augment_blank_image_stays_blank():
    out = augment_images(
        np.zeros((1, 5, 5), dtype=np.float32), np.ones((1, 2)), np.ones(1)
    )
    assert np.all(np.isfinite(out)) and np.all(out == 0)
