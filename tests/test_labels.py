"""Tests for :mod:`sk_mann.labels`: one-hot and 5-character string label codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sk_mann.labels import LabelScheme, make_label_scheme


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------
# One-hot scheme.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_way", [2, 5, 15])
def test_onehot_scheme_sizes(n_way):
    s = make_label_scheme("onehot", n_way)
    assert s == LabelScheme(1, n_way)
    assert s.n_codes == n_way
    assert s.width == n_way


@pytest.mark.parametrize("n_way", [3, 5])
def test_onehot_encode_is_the_identity_matrix(n_way):
    s = make_label_scheme("onehot", n_way)
    got = s.encode(np.arange(n_way))
    assert got.dtype == np.float32
    assert_array_equal(got, np.eye(n_way))


def test_onehot_digits():
    s = make_label_scheme("onehot", 5)
    assert_array_equal(s.digits(np.array([0, 3, 4])), [[0], [3], [4]])


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_encode_null_label_is_zeros(labels, n_way):
    s = make_label_scheme(labels, n_way)
    got = s.encode(np.array([-1, 2, -1]))
    assert got.shape == (3, s.width)
    assert_array_equal(got[0], 0.0)
    assert_array_equal(got[2], 0.0)
    assert got[1].sum() == s.n_groups


def test_encode_keeps_leading_shape():
    s = make_label_scheme("string", 15)
    codes = np.array([[0, 7, -1], [3124, 42, 1]])
    got = s.encode(codes)
    assert got.shape == (2, 3, 25)
    assert_array_equal(got.reshape(2, 3, 5, 5).sum(-1)[codes >= 0], 1.0)


# ---------------------------------------------------------------------------
# String scheme.
# ---------------------------------------------------------------------------


def test_string_scheme_sizes():
    s = make_label_scheme("string", 15)
    assert (s.n_groups, s.group_size) == (5, 5)
    assert s.n_codes == 3125
    assert s.width == 25


@pytest.mark.parametrize(
    "code, digits",
    [
        (0, [0, 0, 0, 0, 0]),
        (7, [0, 0, 0, 1, 2]),
        (5, [0, 0, 0, 1, 0]),
        (124, [0, 0, 4, 4, 4]),
        (625, [1, 0, 0, 0, 0]),
        (3124, [4, 4, 4, 4, 4]),
        (1 * 625 + 2 * 125 + 3 * 25 + 4 * 5 + 0, [1, 2, 3, 4, 0]),
    ],
)
def test_string_digits_most_significant_first(code, digits):
    s = make_label_scheme("string", 5)
    assert_array_equal(s.digits(np.array([code]))[0], digits)
    want = np.zeros(25, dtype=np.float32)
    want[np.arange(5) * 5 + np.array(digits)] = 1.0
    assert_array_equal(s.encode(np.array([code]))[0], want)


def test_string_encode_code_7_by_hand():
    got = make_label_scheme("string", 5).encode(np.array(7))
    assert got.shape == (25,)
    assert_array_equal(np.flatnonzero(got), [0, 5, 10, 16, 22])


def test_string_codes_are_all_distinct():
    s = make_label_scheme("string", 5)
    enc = s.encode(np.arange(s.n_codes))
    assert len(np.unique(enc, axis=0)) == 3125
    d = s.digits(np.arange(s.n_codes))
    assert_array_equal(d @ (5 ** np.arange(4, -1, -1)), np.arange(3125))


@pytest.mark.parametrize("labels", ["", "one-hot", "strings", "regression"])
def test_make_label_scheme_rejects_bad_names(labels):
    with pytest.raises(ValueError):
        make_label_scheme(labels, 5)


# ---------------------------------------------------------------------------
# code_log_probs, loss, predict_digits.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_code_log_probs_matches_numpy(labels, n_way):
    s = make_label_scheme(labels, n_way)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, s.width))
    codes = rng.choice(s.n_codes, size=min(6, s.n_codes), replace=False)
    got = s.code_log_probs(torch.from_numpy(logits), codes).numpy()
    assert got.shape == (2, 3, len(codes))
    logp = np_log_softmax(logits.reshape(2, 3, s.n_groups, s.group_size))
    want = np.zeros((2, 3, len(codes)))
    for a in range(2):
        for b in range(3):
            for k, code in enumerate(codes):
                digits = s.digits(np.array([code]))[0]
                want[a, b, k] = sum(logp[a, b, g, digits[g]] for g in range(s.n_groups))
    assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize(
    "labels, n_way", [("onehot", 5), ("onehot", 15), ("string", 5)]
)
def test_code_probs_sum_to_one_over_all_codes(labels, n_way):
    s = make_label_scheme(labels, n_way)
    logits = torch.randn(
        4, s.width, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    lp = s.code_log_probs(logits, np.arange(s.n_codes))
    assert lp.shape == (4, s.n_codes)
    assert_allclose(lp.exp().sum(-1).numpy(), 1.0, rtol=1e-10)


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_loss_matches_numpy(labels, n_way):
    s = make_label_scheme(labels, n_way)
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, s.width))
    codes = rng.integers(0, s.n_codes, size=(3, 4))
    targets = s.digits(codes)
    got = s.loss(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    logp = np_log_softmax(logits.reshape(3, 4, s.n_groups, s.group_size))
    per_step = np.zeros((3, 4))
    for a in range(3):
        for b in range(4):
            per_step[a, b] = -sum(
                logp[a, b, g, targets[a, b, g]] for g in range(s.n_groups)
            )
    assert_allclose(got, per_step.mean(), rtol=1e-12)


def test_loss_equals_minus_mean_code_log_prob():
    s = make_label_scheme("string", 5)
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.standard_normal((6, 25)))
    codes = rng.integers(0, 3125, size=6)
    lp = s.code_log_probs(logits, codes)  # (6, 6): every step against every code
    want = -lp.diagonal().mean()
    got = s.loss(logits, torch.from_numpy(s.digits(codes)))
    assert_allclose(got.item(), want.item(), rtol=1e-12)


def test_loss_is_differentiable():
    s = make_label_scheme("string", 5)
    logits = torch.zeros(2, 3, 25, dtype=torch.float64, requires_grad=True)
    targets = torch.from_numpy(s.digits(np.array([[0, 7, 3124], [1, 2, 3]])))
    loss = s.loss(logits, targets)
    assert_allclose(loss.item(), 5 * np.log(5), rtol=1e-12)  # uniform logits
    loss.backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_predict_digits(labels, n_way):
    s = make_label_scheme(labels, n_way)
    codes = (
        np.array([[0, 3], [4, 2]])
        if labels == "onehot"
        else np.array([[7, 3124], [0, 1000]])
    )
    logits = torch.from_numpy(5.0 * s.encode(codes) - 1.0)
    got = s.predict_digits(logits).numpy()
    assert got.shape == (2, 2, s.n_groups)
    assert_array_equal(got, s.digits(codes))


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_code_log_probs_numpy_matches_torch(labels, n_way):
    s = make_label_scheme(labels, n_way)
    rng = np.random.default_rng(3)
    logits = (10 * rng.standard_normal((4, 2, s.width))).astype(np.float32)
    codes = rng.choice(s.n_codes, size=min(7, s.n_codes), replace=False)
    got = s.code_log_probs_numpy(logits, codes)
    assert got.shape == (4, 2, len(codes))
    want = s.code_log_probs(torch.from_numpy(logits.astype(np.float64)), codes)
    assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("labels, n_way", [("onehot", 5), ("string", 5)])
def test_output_column_scores_renormalise_like_log_probs(labels, n_way):
    """A softmax of the column scores over some codes = their renormalised probs."""
    s = make_label_scheme(labels, n_way)
    rng = np.random.default_rng(4)
    logits = 3 * rng.standard_normal(s.width)
    codes = rng.choice(s.n_codes, size=min(4, s.n_codes), replace=False)
    assert_array_equal(
        s.output_columns(codes), s.digits(codes) + s.group_size * np.arange(s.n_groups)
    )
    scores = logits[s.output_columns(codes)].sum(axis=1)
    got = np.exp(scores - scores.max())
    got /= got.sum()
    logp = s.code_log_probs_numpy(logits[None], codes)[0]
    assert_allclose(got, np.exp(logp) / np.exp(logp).sum(), rtol=1e-12)
    assert not np.allclose(got, 1 / len(codes))  # the test sees real differences
