"""Tests for :mod:`sk_mann.memory`, the LRUA memory (Santoro et al. 2016, eq. 2-8).

Every function is compared with a naive NumPy reference written with explicit
loops over batch, head and slot, on random float64 inputs of several shapes.
Hand-computed cases pin down the details that reproductions got wrong:
least-used slots (not most-used), erasing the single least-used slot of the
*previous* usage, and write weights built from step ``t-1`` terms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sk_mann import memory as mem
from sk_mann.model import MANN

EPS = 1e-8  # the guard of eq. 2 in the library

# the reference step, built from the one-equation functions, and the fast path
STEP_FNS = pytest.mark.parametrize(
    "step_fn", [mem.lrua_step, mem.lrua_step_fused], ids=["reference", "fused"]
)

# (batch, heads, slots, width)
SHAPES = [(1, 1, 4, 3), (2, 3, 7, 5), (3, 4, 16, 2)]


# ---------------------------------------------------------------------------
# Naive NumPy references, one per equation.
# ---------------------------------------------------------------------------


def ref_cosine(keys, memory):
    """Eq. 2: ``K(k, M(i)) = k.M(i) / (|k| |M(i)| + eps)``."""
    batch, heads, width = keys.shape
    slots = memory.shape[1]
    out = np.zeros((batch, heads, slots))
    for b in range(batch):
        for h in range(heads):
            nk = math.sqrt(sum(keys[b, h, j] ** 2 for j in range(width)))
            for i in range(slots):
                dot = sum(keys[b, h, j] * memory[b, i, j] for j in range(width))
                nm = math.sqrt(sum(memory[b, i, j] ** 2 for j in range(width)))
                out[b, h, i] = dot / (nk * nm + EPS)
    return out


def ref_read_weights(sim, strength=None):
    """Eq. 3: softmax over slots (of ``beta * sim`` given key strengths)."""
    out = np.zeros_like(sim)
    batch, heads, slots = sim.shape
    for b in range(batch):
        for h in range(heads):
            beta = 1.0 if strength is None else strength[b, h]
            z = sum(math.exp(beta * sim[b, h, j]) for j in range(slots))
            for i in range(slots):
                out[b, h, i] = math.exp(beta * sim[b, h, i]) / z
    return out


def ref_read(weights, memory):
    """Eq. 4: ``r = sum_i w(i) M(i)``."""
    batch, heads, slots = weights.shape
    width = memory.shape[2]
    out = np.zeros((batch, heads, width))
    for b in range(batch):
        for h in range(heads):
            for j in range(width):
                out[b, h, j] = sum(
                    weights[b, h, i] * memory[b, i, j] for i in range(slots)
                )
    return out


def ref_usage(usage, read_w, write_w, gamma):
    """Eq. 5: ``u_t = gamma u_{t-1} + sum_h (w^r_t + w^w_t)``."""
    batch, heads, slots = read_w.shape
    out = np.zeros_like(usage)
    for b in range(batch):
        for i in range(slots):
            out[b, i] = gamma * usage[b, i]
            for h in range(heads):
                out[b, i] += read_w[b, h, i] + write_w[b, h, i]
    return out


def ref_least_used(usage, n):
    """Eq. 6: 0/1 mask of the n smallest usages, ties to the lowest index."""
    batch, slots = usage.shape
    out = np.zeros_like(usage)
    for b in range(batch):
        chosen = []
        for _ in range(n):
            best = None
            for i in range(slots):
                if i in chosen:
                    continue
                if best is None or usage[b, i] < usage[b, best]:
                    best = i
            chosen.append(best)
        for i in chosen:
            out[b, i] = 1.0
    return out


def ref_write_weights(gate, prev_read_w, prev_least_used):
    """Eq. 7: ``w^w_t = a w^r_{t-1} + (1 - a) w^lu_{t-1}``."""
    batch, heads, slots = prev_read_w.shape
    out = np.zeros_like(prev_read_w)
    for b in range(batch):
        for h in range(heads):
            a = gate[b, h]
            for i in range(slots):
                out[b, h, i] = (
                    a * prev_read_w[b, h, i] + (1 - a) * prev_least_used[b, i]
                )
    return out


def ref_erase(memory, prev_usage):
    """Zero the single slot with the smallest previous usage (lowest index on ties)."""
    out = memory.copy()
    batch, slots = prev_usage.shape
    for b in range(batch):
        best = 0
        for i in range(1, slots):
            if prev_usage[b, i] < prev_usage[b, best]:
                best = i
        out[b, best, :] = 0.0
    return out


def ref_write(memory, write_w, content):
    """Eq. 8: ``M_t(i) = M(i) + sum_h w_h(i) c_h``."""
    out = memory.copy()
    batch, heads, slots = write_w.shape
    width = memory.shape[2]
    for b in range(batch):
        for i in range(slots):
            for h in range(heads):
                for j in range(width):
                    out[b, i, j] += write_w[b, h, i] * content[b, h, j]
    return out


def ref_lrua_step(state, keys, gate, content, gamma, read_after_write, strength=None):
    """A whole step composed of the references above."""
    memory, usage, prev_read_w, prev_lu = state
    heads = keys.shape[1]
    write_w = ref_write_weights(gate, prev_read_w, prev_lu)
    new_memory = ref_write(ref_erase(memory, usage), write_w, content)
    source = new_memory if read_after_write else memory
    read_w = ref_read_weights(ref_cosine(keys, source), strength)
    reads = ref_read(read_w, source)
    new_usage = ref_usage(usage, read_w, write_w, gamma)
    return reads, (new_memory, new_usage, read_w, ref_least_used(new_usage, heads))


# ---------------------------------------------------------------------------
# Random inputs.
# ---------------------------------------------------------------------------


def random_state(rng, batch, heads, slots, width):
    """A plausible state after some steps, as NumPy float64 arrays."""
    memory = rng.standard_normal((batch, slots, width))
    usage = rng.random((batch, slots)) * 3.0
    logits = rng.standard_normal((batch, heads, slots))
    read_w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return memory, usage, read_w, ref_least_used(usage, heads)


def t(a):
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def to_state(arrays):
    return mem.MemoryState(*(t(a) for a in arrays))


def unit_sigmoid(rng, shape):
    return 1.0 / (1.0 + np.exp(-rng.standard_normal(shape)))


# ---------------------------------------------------------------------------
# Shapes.
# ---------------------------------------------------------------------------


@STEP_FNS
@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_shapes(batch, heads, slots, width, step_fn):
    rng = np.random.default_rng(0)
    keys = t(rng.standard_normal((batch, heads, width)))
    M = t(rng.standard_normal((batch, slots, width)))
    usage = t(rng.random((batch, slots)))
    w = t(rng.random((batch, heads, slots)))
    gate = t(rng.random((batch, heads)))
    assert mem.cosine_similarity(keys, M).shape == (batch, heads, slots)
    assert mem.read_weights(w).shape == (batch, heads, slots)
    assert mem.read(w, M).shape == (batch, heads, width)
    assert mem.update_usage(usage, w, w, 0.95).shape == (batch, slots)
    assert mem.least_used_weights(usage, heads).shape == (batch, slots)
    assert mem.write_weights(gate, w, usage).shape == (batch, heads, slots)
    assert mem.erase_least_used(M, usage).shape == (batch, slots, width)
    assert mem.write(M, w, keys).shape == (batch, slots, width)
    state = mem.initial_state(batch, slots, width, heads, dtype=torch.float64)
    reads, new = step_fn(state, keys, gate, keys)
    assert reads.shape == (batch, heads, width)
    assert new.memory.shape == (batch, slots, width)
    assert new.usage.shape == (batch, slots)
    assert new.read_weights.shape == (batch, heads, slots)
    assert new.least_used.shape == (batch, slots)


@STEP_FNS
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_preserved(dtype, step_fn):
    state = mem.initial_state(2, 5, 3, 2, dtype=dtype)
    assert all(x.dtype == dtype for x in state)
    keys = torch.rand(2, 2, 3, dtype=dtype)
    reads, new = step_fn(state, keys, torch.rand(2, 2, dtype=dtype), keys)
    assert reads.dtype == dtype
    assert all(x.dtype == dtype for x in new)


# ---------------------------------------------------------------------------
# Values against the NumPy references, on random inputs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_cosine_similarity_matches_reference(batch, heads, slots, width):
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((batch, heads, width))
    M = rng.standard_normal((batch, slots, width))
    M[0, 0] = 0.0  # a zero row: the eps guard keeps it finite (similarity 0)
    got = mem.cosine_similarity(t(keys), t(M)).numpy()
    assert_allclose(got, ref_cosine(keys, M), rtol=1e-12, atol=1e-14)
    assert_array_equal(got[0, :, 0], 0.0)
    assert np.all(np.abs(got) <= 1.0 + 1e-12)


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_read_weights_match_reference(batch, heads, slots, width):
    rng = np.random.default_rng(2)
    sim = rng.uniform(-1, 1, (batch, heads, slots))
    got = mem.read_weights(t(sim)).numpy()
    assert_allclose(got, ref_read_weights(sim), rtol=1e-12)
    assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_read_matches_reference(batch, heads, slots, width):
    rng = np.random.default_rng(3)
    w = rng.random((batch, heads, slots))
    M = rng.standard_normal((batch, slots, width))
    assert_allclose(
        mem.read(t(w), t(M)).numpy(), ref_read(w, M), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("gamma", [0.0, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_update_usage_matches_reference(batch, heads, slots, width, gamma):
    rng = np.random.default_rng(4)
    u = rng.random((batch, slots))
    r = rng.random((batch, heads, slots))
    w = rng.random((batch, heads, slots))
    got = mem.update_usage(t(u), t(r), t(w), gamma).numpy()
    assert_allclose(got, ref_usage(u, r, w, gamma), rtol=1e-12)


LEAST_USED = [mem.least_used_weights, mem.least_used_weights_argmin]


@pytest.mark.parametrize("least_used", LEAST_USED, ids=["sort", "argmin"])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_least_used_weights_match_reference(batch, heads, slots, width, n, least_used):
    rng = np.random.default_rng(5)
    u = rng.random((batch, slots))
    u[0, : slots // 2] = 0.25  # ties, broken towards the lowest index
    got = least_used(t(u), n).numpy()
    assert_array_equal(got, ref_least_used(u, n))
    assert_array_equal(got.sum(-1), n)


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_write_weights_match_reference(batch, heads, slots, width):
    rng = np.random.default_rng(6)
    gate = rng.random((batch, heads))
    prev_r = rng.random((batch, heads, slots))
    prev_lu = ref_least_used(rng.random((batch, slots)), heads)
    got = mem.write_weights(t(gate), t(prev_r), t(prev_lu)).numpy()
    assert_allclose(got, ref_write_weights(gate, prev_r, prev_lu), rtol=1e-12)


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_erase_matches_reference(batch, heads, slots, width):
    rng = np.random.default_rng(7)
    M = rng.standard_normal((batch, slots, width))
    u = rng.random((batch, slots))
    assert_array_equal(mem.erase_least_used(t(M), t(u)).numpy(), ref_erase(M, u))


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_write_matches_reference(batch, heads, slots, width):
    rng = np.random.default_rng(8)
    M = rng.standard_normal((batch, slots, width))
    w = rng.random((batch, heads, slots))
    c = rng.standard_normal((batch, heads, width))
    got = mem.write(t(M), t(w), t(c)).numpy()
    assert_allclose(got, ref_write(M, w, c), rtol=1e-12, atol=1e-14)


@STEP_FNS
@pytest.mark.parametrize("strong", [False, True], ids=["no-strength", "strength"])
@pytest.mark.parametrize("read_after_write", [True, False])
@pytest.mark.parametrize("gamma", [0.95, 0.99])
@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_lrua_step_matches_reference(
    batch, heads, slots, width, gamma, read_after_write, strong, step_fn
):
    rng = np.random.default_rng(9)
    state = random_state(rng, batch, heads, slots, width)
    keys = np.tanh(rng.standard_normal((batch, heads, width)))
    content = np.tanh(rng.standard_normal((batch, heads, width)))
    gate = unit_sigmoid(rng, (batch, heads))
    strength = rng.uniform(0.0, 20.0, (batch, heads)) if strong else None
    reads, new = step_fn(
        to_state(state),
        t(keys),
        t(gate),
        t(content),
        gamma=gamma,
        read_after_write=read_after_write,
        strength=None if strength is None else t(strength),
    )
    ref_reads, ref_new = ref_lrua_step(
        state, keys, gate, content, gamma, read_after_write, strength
    )
    assert isinstance(new, mem.MemoryState)
    assert_allclose(reads.numpy(), ref_reads, rtol=1e-10, atol=1e-12)
    for field, got, want in zip(new._fields, new, ref_new):
        assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12, err_msg=field)


@STEP_FNS
@pytest.mark.parametrize("read_after_write", [True, False])
def test_lrua_step_several_steps_match_reference(read_after_write, step_fn):
    """Ten chained steps from the initial state (the recurrence, not one step)."""
    rng = np.random.default_rng(10)
    batch, heads, slots, width = 2, 2, 6, 3
    state = mem.initial_state(batch, slots, width, heads, dtype=torch.float64)
    ref = tuple(x.numpy().copy() for x in state)
    for _ in range(10):
        keys = np.tanh(rng.standard_normal((batch, heads, width)))
        gate = unit_sigmoid(rng, (batch, heads))
        reads, state = step_fn(
            state, t(keys), t(gate), t(keys), read_after_write=read_after_write
        )
        ref_reads, ref = ref_lrua_step(ref, keys, gate, keys, 0.95, read_after_write)
        assert_allclose(reads.numpy(), ref_reads, rtol=1e-10, atol=1e-12)
    for got, want in zip(state, ref):
        assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strong", [False, True], ids=["no-strength", "strength"])
@pytest.mark.parametrize("read_after_write", [True, False])
@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_fused_step_equals_reference_step_with_gradients(
    batch, heads, slots, width, read_after_write, strong
):
    rng = np.random.default_rng(15)
    M, usage, prev_r, prev_lu = random_state(rng, batch, heads, slots, width)
    arrays = [
        np.tanh(rng.standard_normal((batch, heads, width))),
        unit_sigmoid(rng, (batch, heads)),
        rng.standard_normal((batch, heads, width)),
        M,
        rng.uniform(0.0, 10.0, (batch, heads)),
    ]
    results = []
    for fn in (mem.lrua_step, mem.lrua_step_fused):
        leaves = [t(a).requires_grad_() for a in arrays[: 5 if strong else 4]]
        keys, gate, content, memory = leaves[:4]
        state = mem.MemoryState(memory, t(usage), t(prev_r), t(prev_lu))
        reads, new = fn(
            state,
            keys,
            gate,
            content,
            gamma=0.9,
            read_after_write=read_after_write,
            strength=leaves[4] if strong else None,
        )
        (
            reads.sin().sum() + new.memory.cos().sum() + new.usage.square().sum()
        ).backward()
        results.append(([reads, *new], [leaf.grad for leaf in leaves]))
    (ref_out, ref_grads), (out, grads) = results
    for got, want in zip(out, ref_out):
        assert_allclose(
            got.detach().numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-13
        )
    for got, want in zip(grads, ref_grads):
        assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------


def test_cosine_similarity_hand_case():
    keys = t([[[1.0, 0.0]]])
    M = t([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]]])
    got = mem.cosine_similarity(keys, M).numpy()[0, 0]
    assert_allclose(got, [1.0, 0.0, -1.0, 1.0 / math.sqrt(2.0)], rtol=1e-7)


def test_read_weights_hand_case():
    """Plain softmax, no key strength: similarities 1 and 0 give e/(e+1), 1/(e+1)."""
    got = mem.read_weights(t([[[1.0, 0.0]]])).numpy()[0, 0]
    e = math.e
    assert_allclose(got, [e / (e + 1), 1 / (e + 1)], rtol=1e-12)


def test_read_weights_key_strength_hand_case():
    """Key strength 2 on similarities 1 and 0: e^2/(e^2+1); 0 gives equal weights."""
    sim = t([[[1.0, 0.0], [1.0, 0.0]]])
    got = mem.read_weights(sim, t([[2.0, 0.0]])).numpy()[0]
    e2 = math.e**2
    assert_allclose(got[0], [e2 / (e2 + 1), 1 / (e2 + 1)], rtol=1e-12)
    assert_allclose(got[1], [0.5, 0.5], rtol=1e-12)


@pytest.mark.parametrize("batch, heads, slots, width", SHAPES)
def test_read_weights_with_strength_match_reference(batch, heads, slots, width):
    rng = np.random.default_rng(21)
    sim = rng.uniform(-1, 1, (batch, heads, slots))
    beta = rng.uniform(0.0, 30.0, (batch, heads))
    got = mem.read_weights(t(sim), t(beta)).numpy()
    assert_allclose(got, ref_read_weights(sim, beta), rtol=1e-12)
    assert_allclose(got.sum(-1), 1.0, rtol=1e-12)


def test_read_hand_case():
    M = t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    w = t([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    assert_allclose(mem.read(w, M).numpy()[0], [[2.0, 3.0], [5.0, 6.0]])


def test_update_usage_hand_case():
    u = t([[1.0, 2.0]])
    r = t([[[0.25, 0.75], [0.5, 0.5]]])
    w = t([[[1.0, 0.0], [0.0, 1.0]]])
    # 0.5*[1, 2] + ([0.25, 0.75] + [0.5, 0.5]) + ([1, 0] + [0, 1])
    assert_allclose(mem.update_usage(u, r, w, 0.5).numpy(), [[2.25, 3.25]])


@pytest.mark.parametrize(
    "usage, n, expected",
    [
        ([0.5, 0.1, 0.9, 0.2], 2, [0, 1, 0, 1]),
        ([0.5, 0.1, 0.9, 0.2], 1, [0, 1, 0, 0]),
        ([0.5, 0.1, 0.9, 0.2], 3, [1, 1, 0, 1]),
        ([0.0, 0.0, 0.0, 0.0], 2, [1, 1, 0, 0]),  # ties -> lowest index
        ([0.3, 0.1, 0.1, 0.1], 2, [0, 1, 1, 0]),
        ([2.0, 1.0, 1.0, 0.5, 3.0], 2, [0, 1, 0, 1, 0]),
    ],
)
@pytest.mark.parametrize("least_used", LEAST_USED, ids=["sort", "argmin"])
def test_least_used_hand_cases(usage, n, expected, least_used):
    got = least_used(t([usage]), n).numpy()[0]
    assert_array_equal(got, expected)


@pytest.mark.parametrize("least_used", LEAST_USED, ids=["sort", "argmin"])
def test_least_used_is_not_most_used(least_used):
    """Regression: one reproduction used top-k the wrong way and took the most-used."""
    usage = t([[0.5, 0.1, 0.9, 0.2]])
    got = least_used(usage, 2).numpy()[0]
    assert got[2] == 0 and got[0] == 0  # the two most-used slots are not selected
    assert_array_equal(got, [0, 1, 0, 1])


@pytest.mark.parametrize("least_used", LEAST_USED, ids=["sort", "argmin"])
def test_least_used_is_a_constant_mask(least_used):
    usage = torch.tensor([[0.5, 0.1, 0.9]], dtype=torch.float64, requires_grad=True)
    assert not least_used(usage, 1).requires_grad


@pytest.mark.parametrize(
    "prev_usage, zeroed",
    [
        ([0.4, 0.2, 0.05, 0.1], 2),  # the least used; the 2nd least used is slot 3
        ([0.0, 0.0, 0.3, 0.0], 0),  # ties -> lowest index
        ([0.9, 0.8, 0.7, 0.6], 3),
    ],
)
def test_erase_zeroes_exactly_the_least_used_slot(prev_usage, zeroed):
    M = np.arange(1.0, 13.0).reshape(1, 4, 3)
    got = mem.erase_least_used(t(M), t([prev_usage])).numpy()
    want = M.copy()
    want[0, zeroed] = 0.0
    assert_array_equal(got, want)


def test_erase_is_not_the_nth_least_used():
    """Regression: one reproduction zeroed the n-th least-used slot instead."""
    M = np.ones((1, 4, 2))
    usage = [[0.4, 0.2, 0.05, 0.1]]  # n=2: the 2nd least used is slot 3
    got = mem.erase_least_used(t(M), t(usage)).numpy()[0]
    assert_array_equal(got.sum(-1), [2.0, 2.0, 0.0, 2.0])


def test_write_weights_hand_case():
    gate = t([[0.25]])
    prev_r = t([[[0.5, 0.5, 0.0]]])
    prev_lu = t([[0.0, 0.0, 1.0]])
    got = mem.write_weights(gate, prev_r, prev_lu).numpy()[0, 0]
    assert_allclose(got, [0.125, 0.125, 0.75])


def test_write_hand_case():
    M = np.zeros((1, 3, 2))
    w = t([[[0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]])
    c = t([[[2.0, 3.0], [4.0, -2.0]]])
    got = mem.write(t(M), w, c).numpy()[0]
    assert_allclose(got, [[0.0, 0.0], [4.0, 2.0], [2.0, -1.0]])


def make_step_state(usage, prev_read_slot, slots=5, width=3, seed=0):
    """One head; memory of distinct rows; previous reads on one slot."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((1, slots, width))
    usage = np.asarray([usage], dtype=np.float64)
    prev_r = np.zeros((1, 1, slots))
    prev_r[0, 0, prev_read_slot] = 1.0
    return M, usage, prev_r, ref_least_used(usage, 1)


@STEP_FNS
def test_step_gate_one_writes_where_it_read_at_t_minus_1(step_fn):
    """gate=1: all the write goes to w^r_{t-1}, here slot 0.

    The key matches slot 3, so using this step's read weights would spread
    the write over every slot (mostly slot 3).
    """
    M, usage, prev_r, prev_lu = make_step_state([0.5, 0.6, 0.7, 0.8, 0.1], 0)
    keys = M[:, 3:4, :].copy()
    content = np.array([[[10.0, 20.0, 30.0]]])
    _, new = step_fn(
        to_state((M, usage, prev_r, prev_lu)), t(keys), t([[1.0]]), t(content)
    )
    got = new.memory.numpy()
    want = M.copy()
    want[0, 4] = 0.0  # erased: least used at t-1
    want[0, 0] += content[0, 0]
    assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@STEP_FNS
def test_step_gate_zero_writes_to_least_used_of_t_minus_1(step_fn):
    """gate=0: the write goes to w^lu_{t-1} (slot 1), not to a mask of new usage.

    The key matches slot 1, so after this step's read slot 1 is no longer the
    least used: a mask computed from ``gamma u_{t-1} + w^r_t`` picks another slot.
    """
    M, usage, prev_r, prev_lu = make_step_state([0.3, 0.0, 0.3, 0.3, 0.3], 0)
    assert_array_equal(prev_lu, [[0, 1, 0, 0, 0]])
    keys = M[:, 1:2, :].copy()
    content = np.array([[[1.0, -2.0, 3.0]]])
    state = to_state((M, usage, prev_r, prev_lu))
    read_now = mem.read_weights(mem.cosine_similarity(t(keys), t(M))).numpy()
    premature = ref_least_used(0.95 * usage + read_now[:, 0], 1)
    assert premature[0, 1] == 0  # the wrong mask would not pick slot 1
    _, new = step_fn(state, t(keys), t([[0.0]]), t(content))
    want = M.copy()
    want[0, 1] = content[0, 0]  # erased (least used at t-1), then written
    assert_allclose(new.memory.numpy(), want, rtol=1e-12, atol=1e-12)
    write_w = np.array([[[0.0, 1.0, 0.0, 0.0, 0.0]]])
    want_usage = 0.95 * usage + new.read_weights.numpy()[:, 0] + write_w[:, 0]
    assert_allclose(new.usage.numpy(), want_usage, rtol=1e-12)


@STEP_FNS
def test_step_erases_with_previous_usage_only(step_fn):
    """Erase uses w^u_{t-1}: with no content written, only that slot changes."""
    M, usage, prev_r, prev_lu = make_step_state([0.4, 0.2, 0.05, 0.1, 0.3], 2)
    keys = M[:, 0:1, :].copy()
    _, new = step_fn(
        to_state((M, usage, prev_r, prev_lu)),
        t(keys),
        t([[0.5]]),
        t(np.zeros((1, 1, 3))),
    )
    got = new.memory.numpy()
    assert_array_equal(got[0, 2], 0.0)
    for i in (0, 1, 3, 4):
        assert_array_equal(got[0, i], M[0, i])
    # the usage after this step has another argmin: the erase did not use it
    assert int(np.argmin(new.usage.numpy()[0])) != 2


@STEP_FNS
@pytest.mark.parametrize("read_after_write", [True, False])
def test_step_reads_the_documented_memory(read_after_write, step_fn):
    rng = np.random.default_rng(11)
    state = random_state(rng, 1, 1, 4, 3)
    keys = np.tanh(rng.standard_normal((1, 1, 3)))
    reads, new = step_fn(
        to_state(state), t(keys), t([[0.3]]), t(keys), read_after_write=read_after_write
    )
    source = new.memory.numpy() if read_after_write else state[0]
    w = ref_read_weights(ref_cosine(keys, source))
    assert_allclose(reads.numpy(), ref_read(w, source), rtol=1e-10)
    assert_allclose(new.read_weights.numpy(), w, rtol=1e-10)


@STEP_FNS
def test_step_new_least_used_comes_from_new_usage(step_fn):
    rng = np.random.default_rng(12)
    state = random_state(rng, 2, 3, 8, 4)
    keys = np.tanh(rng.standard_normal((2, 3, 4)))
    _, new = step_fn(to_state(state), t(keys), t(rng.random((2, 3))), t(keys))
    assert_array_equal(new.least_used.numpy(), ref_least_used(new.usage.numpy(), 3))


# ---------------------------------------------------------------------------
# initial_state.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch, slots, width, n_reads", [(1, 4, 2, 1), (3, 7, 5, 3)])
def test_initial_state(batch, slots, width, n_reads):
    s = mem.initial_state(batch, slots, width, n_reads, dtype=torch.float64)
    assert s.memory.shape == (batch, slots, width)
    assert_array_equal(s.memory.numpy(), mem.MEMORY_INIT)
    assert mem.MEMORY_INIT == 1e-6
    assert s.usage.shape == (batch, slots)
    assert_array_equal(s.usage.numpy(), 0.0)
    assert s.read_weights.shape == (batch, n_reads, slots)
    assert_array_equal(s.read_weights.numpy(), 0.0)
    want_lu = np.zeros((batch, slots))
    want_lu[:, :n_reads] = 1.0
    assert_array_equal(s.least_used.numpy(), want_lu)


@STEP_FNS
def test_first_step_from_initial_state_writes_to_first_slots(step_fn):
    """At t=1: w^r_0 = 0, so the write goes to the first n slots, scaled by 1-gate."""
    batch, heads, slots, width = 1, 2, 5, 3
    s = mem.initial_state(batch, slots, width, heads, dtype=torch.float64)
    keys = t(np.full((1, 2, 3), 0.5))
    gate = t([[0.25, 0.75]])
    _, new = step_fn(s, keys, gate, keys)
    got = new.memory.numpy()[0]
    # slot 0 erased then written by both heads: (0.75 + 0.25) * 0.5
    assert_allclose(got[0], 0.5)
    assert_allclose(got[1], 1e-6 + 0.5)
    assert_allclose(got[2:], 1e-6)


# ---------------------------------------------------------------------------
# Gradients.
# ---------------------------------------------------------------------------


@STEP_FNS
@pytest.mark.parametrize("read_after_write", [True, False])
def test_gradcheck_lrua_step(read_after_write, step_fn):
    rng = np.random.default_rng(13)
    batch, heads, slots, width = 2, 2, 5, 3
    M, usage, prev_r, prev_lu = random_state(rng, batch, heads, slots, width)
    keys = t(np.tanh(rng.standard_normal((batch, heads, width)))).requires_grad_()
    gate = t(unit_sigmoid(rng, (batch, heads))).requires_grad_()
    content = t(rng.standard_normal((batch, heads, width))).requires_grad_()
    memory = t(M).requires_grad_()

    def f(keys, gate, content, memory):
        state = mem.MemoryState(memory, t(usage), t(prev_r), t(prev_lu))
        reads, new = step_fn(
            state, keys, gate, content, read_after_write=read_after_write
        )
        # the new least-used mask is piecewise constant: left out
        return reads, new.memory, new.usage, new.read_weights

    assert torch.autograd.gradcheck(f, (keys, gate, content, memory))


@STEP_FNS
def test_gradient_reaches_keys_gate_content_and_memory(step_fn):
    rng = np.random.default_rng(14)
    M, usage, prev_r, prev_lu = random_state(rng, 2, 2, 5, 3)
    leaves = [
        t(np.tanh(rng.standard_normal((2, 2, 3)))).requires_grad_(),
        t(unit_sigmoid(rng, (2, 2))).requires_grad_(),
        t(rng.standard_normal((2, 2, 3))).requires_grad_(),
        t(M).requires_grad_(),
    ]
    keys, gate, content, memory = leaves
    state = mem.MemoryState(memory, t(usage), t(prev_r), t(prev_lu))
    reads, _ = step_fn(state, keys, gate, content)
    reads.square().sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("controller", ["lstm", "ff"])
@pytest.mark.parametrize(
    "write_content, key_strength", [("key", False), ("add", False), ("add", True)]
)
def test_gradcheck_mann_step(controller, write_content, key_strength):
    torch.manual_seed(0)
    n_in, n_lab, n_out = 3, 2, 2
    net = MANN(
        n_in,
        n_lab,
        n_out,
        controller=controller,
        controller_size=4,
        n_slots=5,
        slot_size=3,
        n_reads=2,
        write_content=write_content,
        key_strength=key_strength,
    ).double()
    state0 = net.initial_state(2)
    # take two steps so that the state is not the trivial initial one
    with torch.no_grad():
        for _ in range(2):
            _, state0 = net.step(
                torch.rand(2, n_in + n_lab, dtype=torch.float64), state0
            )
    inputs = torch.rand(2, n_in + n_lab, dtype=torch.float64, requires_grad=True)
    memory = state0.memory.memory.clone().requires_grad_()

    def f(inputs, memory):
        state = state0._replace(memory=state0.memory._replace(memory=memory))
        logits, new = net.step(inputs, state)
        return logits, new.h, new.reads, new.memory.memory, new.memory.usage

    assert torch.autograd.gradcheck(f, (inputs, memory))
