"""The NumPy streaming step agrees with the torch reference ``MANN.step``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sk_mann import _jit_step
from sk_mann._numpy_step import NumpyMANN
from sk_mann.model import MANN

OPTIONS = list(
    itertools.product(["lstm", "ff"], [True, False], ["key", "add"], [True, False])
)


def _stream(module, n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_steps, 1, 12 + 3, generator=g, dtype=torch.float64)


def _small(controller, feedback, content, raw, key_strength=False):
    torch.manual_seed(0)
    module = MANN(
        12,
        3,
        3,
        controller=controller,
        controller_size=16,
        n_slots=6,
        slot_size=5,
        n_reads=2,
        read_feedback=feedback,
        write_content=content,
        read_after_write=raw,
        key_strength=key_strength,
    ).double()
    if key_strength:  # strengths from ~0 to ~10 across rows and steps
        with torch.no_grad():
            module.head.weight[-2:] *= 20.0
            module.head.bias[-2:] = torch.tensor([4.0, -1.0])
    return module


#: Networks with key strengths (read after write or not, key or add vector).
STRENGTH_OPTIONS = [("lstm", True, "add", True), ("ff", False, "key", False)]


@pytest.mark.parametrize("controller,feedback,content,raw", OPTIONS)
def test_numpy_stream_equals_torch(controller, feedback, content, raw):
    # float64: slots written alike have near-equal usages, and float32
    # rounding may order such near-ties differently in the two implementations.
    module = _small(controller, feedback, content, raw)
    fast = NumpyMANN(module)
    state_t = module.initial_state(1)
    state_n = NumpyMANN.state_to_numpy(module.initial_state(1))
    with torch.no_grad():
        for inputs in _stream(module, 20):
            logits_t, state_t = module.step(inputs, state_t)
            logits_n, state_n = fast.step(inputs.numpy(), state_n)
            np.testing.assert_allclose(
                logits_n, logits_t.numpy(), rtol=1e-9, atol=1e-10
            )
    for a, b in zip(
        NumpyMANN.state_to_torch(state_n).memory, state_t.memory, strict=True
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-10)


def test_numpy_rows_share_a_batch_one_state():
    torch.manual_seed(0)
    module = MANN(12, 3, 3, controller_size=16, n_slots=6, slot_size=5, n_reads=2)
    module = module.double()
    fast = NumpyMANN(module)
    state = module.initial_state(1)
    with torch.no_grad():
        for inputs in _stream(module, 5):
            _, state = module.step(inputs, state)
        rows = torch.rand(7, 15, dtype=torch.float64)
        expanded = type(state)(
            *(t.expand(7, *t.shape[1:]) for t in state[:3]),
            type(state.memory)(*(t.expand(7, *t.shape[1:]) for t in state.memory)),
        )
        logits_t, _ = module.step(rows, expanded)
    logits_n, _ = fast.step(rows.numpy(), NumpyMANN.state_to_numpy(state))
    np.testing.assert_allclose(logits_n, logits_t.numpy(), rtol=1e-9, atol=1e-10)


def test_numpy_views_follow_weight_updates():
    module = MANN(12, 3, 3, controller_size=16, n_slots=6, slot_size=5, n_reads=2)
    fast = NumpyMANN(module)
    with torch.no_grad():
        module.output.bias.add_(1.0)
    np.testing.assert_array_equal(fast.b_out, module.output.bias.detach().numpy())


#: The single-row engines: NumPy calls, and the compiled kernels on 1 or 2 threads.
ENGINES = [(False, 1)] + (
    [(True, 1), (True, 2)]
    if _jit_step.AVAILABLE
    else [pytest.param(True, 1, marks=pytest.mark.skip(reason="numba not installed"))]
)


def _engine(module, jit, n_threads):
    fast = NumpyMANN(module)
    fast.jit, fast.n_threads = jit, n_threads
    return fast


@pytest.mark.parametrize("jit,n_threads", ENGINES)
@pytest.mark.parametrize("controller,feedback,content,raw", OPTIONS)
def test_single_row_step_equals_step(
    controller, feedback, content, raw, jit, n_threads
):
    """step_one + commit is the reference step, values and state."""
    module = _small(controller, feedback, content, raw)
    fast = _engine(module, jit, n_threads)
    ref = one = NumpyMANN.state_to_numpy(module.initial_state(1))
    for inputs in _stream(module, 20).numpy()[:, 0]:
        x, label = inputs[:12], inputs[12:]
        logits_ref, ref = fast.step(inputs[None], ref)
        logits, pending = fast.step_one(x, one, label)
        # The step's gate terms without x are prepare's; given, the same logits.
        base = fast.prepare(one, label)
        np.testing.assert_allclose(pending.base, base, rtol=1e-9)
        logits_cached, _ = fast.step_one(x, one, label, base)
        np.testing.assert_array_equal(logits_cached, logits)
        one = fast.commit(pending, one)
        np.testing.assert_allclose(logits, logits_ref[0], rtol=1e-9, atol=1e-10)
        for a, b in zip([*one[:3], *one.memory], [*ref[:3], *ref.memory], strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
def test_label_terms_are_the_label_gate_terms_the_step_reads():
    """``b + W_label y``; a step given them equals a step computing them."""
    module = _small("lstm", True, "add", True)
    fast = NumpyMANN(module)
    label = np.array([0.0, 1.0, 0.0])
    terms = fast.label_terms(label)
    np.testing.assert_allclose(terms, fast.b_in + fast.w_in[:, 12:] @ label, rtol=1e-12)
    state = NumpyMANN.state_to_numpy(module.initial_state(1))
    x = np.linspace(0.0, 1.0, 12)
    given, _ = fast.step_one(x, state, label, terms=terms)
    computed, _ = fast.step_one(x, state, label)
    np.testing.assert_array_equal(given, computed)
    other, _ = fast.step_one(
        x, state, label, terms=fast.label_terms(np.array([1.0, 0.0, 0.0]))
    )
    assert not np.array_equal(other, computed)  # the terms given are the ones read


def test_single_row_step_leaves_its_state_alone():
    module = _small("lstm", True, "add", True)
    fast = NumpyMANN(module)
    state = NumpyMANN.state_to_numpy(module.initial_state(1))
    for inputs in _stream(module, 4):
        x, label = inputs.numpy()[0, :12], inputs.numpy()[0, 12:]
        before = [a.copy() for a in (*state[:3], *state.memory)]
        _, pending = fast.step_one(x, state, label)
        for a, b in zip(before, (*state[:3], *state.memory), strict=True):
            np.testing.assert_array_equal(a, b)
        state = fast.commit(pending, state)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("controller,feedback,content,raw", OPTIONS)
def test_factored_predict_equals_step(controller, feedback, content, raw, jit):
    """predict_logits (NumPy, or with the compiled read) = the step, row by row."""
    if jit and not _jit_step.AVAILABLE:
        pytest.skip("numba not installed")
    module = _small(controller, feedback, content, raw)
    fast = _engine(module, jit, 1)
    state = NumpyMANN.state_to_numpy(module.initial_state(1))
    for inputs in _stream(module, 6):  # a state with a written, partly erased memory
        _, state = fast.step(inputs.numpy(), state)
    rows = np.random.default_rng(1).random((9, 15))
    expected, _ = fast.step(rows, state)
    np.testing.assert_allclose(
        fast.predict_logits(rows, state), expected, rtol=1e-9, atol=1e-10
    )
    # Features only, with the label and recurrent terms folded into ``base``.
    rows[:, 12:] = np.eye(3)[2]
    expected, _ = fast.step(rows, state)
    base = fast.prepare(state, rows[0, 12:])
    np.testing.assert_allclose(
        fast.predict_logits(rows[:, :12], state, base), expected, rtol=1e-9, atol=1e-10
    )


def _streamed(fast, module, stream):
    """Everything a single-row stream through ``fast`` produces, step by step."""
    state = NumpyMANN.state_to_numpy(module.initial_state(1))
    out = []
    for inputs in stream:
        logits, pending = fast.step_one(inputs[:12], state, inputs[12:])
        state = fast.commit(pending, state)
        out += [logits, pending.base, *state[:3], *state.memory]
    return out


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("controller", ["lstm", "ff"])
def test_compiled_step_does_not_depend_on_the_thread_split(controller):
    """Any number of threads gives the same bits (a row's sum never changes)."""
    module = _small(controller, True, "add", True).float()  # 16 units: uneven splits
    stream = _stream(module, 8).numpy()[:, 0].astype(np.float32)
    results = [_streamed(_engine(module, True, n), module, stream) for n in (1, 2, 3)]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("controller", ["lstm", "ff"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_step_reads_weights_backwards_with_the_same_bits(controller, dtype):
    """Alternate steps read the weights in reverse order: the same results."""
    module = _small(controller, True, "add", True).to(torch.float64)
    module = module.float() if dtype == np.float32 else module
    stream = _stream(module, 8).numpy()[:, 0].astype(dtype)
    results = []
    for start_reversed in (False, True):
        fast = _engine(module, True, 2)
        fast._reverse = start_reversed  # flipped before each step
        results.append(_streamed(fast, module, stream))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize(
    "usage",
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: the lowest slots
        [0.3, 0.1, 0.3, 0.1, 0.2, 0.1],
        [np.nan, 0.5, np.nan, 0.2, 0.1, 0.9],  # NaN counts as the largest
        [np.nan, np.nan, np.nan, np.nan, np.nan, 0.4],
        [2.0, 1.0],  # fewer slots than heads
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_least_used_mask_is_a_stable_argsort(usage, dtype):
    usage = np.array(usage, dtype=dtype)
    expected = np.zeros_like(usage)
    expected[np.argsort(usage, kind="stable")[:3]] = 1.0
    np.testing.assert_array_equal(_jit_step._least_used(usage, 3), expected)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_least_used_mask_on_random_usages_with_ties(n):
    rng = np.random.default_rng(n)
    for _ in range(200):
        usage = rng.integers(0, 4, size=rng.integers(1, 12)).astype(np.float64)
        usage[rng.random(usage.shape) < 0.1] = np.nan
        expected = np.zeros_like(usage)
        expected[np.argsort(usage, kind="stable")[:n]] = 1.0
        np.testing.assert_array_equal(_jit_step._least_used(usage, n), expected)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_is_numpys_isfinite_all(dtype):
    rng = np.random.default_rng(0)
    for size in [0, 1, 7, 16, 33, 400]:
        for bad in [None, np.nan, np.inf, -np.inf]:
            row = (rng.standard_normal(size) * 1e30).astype(dtype)
            if bad is not None and size:
                row[rng.integers(size)] = bad
            assert _jit_step.all_finite(row) == bool(np.isfinite(row).all())
    assert _jit_step.all_finite(np.array([np.finfo(dtype).max] * 3, dtype))


def _paper_memory_float32(content):
    """A float32 network with the paper's memory (128 x 40, 4 heads), small LSTM."""
    torch.manual_seed(0)
    return MANN(
        40,
        5,
        5,
        controller_size=32,
        n_slots=128,
        slot_size=40,
        n_reads=4,
        write_content=content,
    )


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("content", ["key", "add"])
def test_compiled_batch_read_equals_numpy_in_float32(content):
    """The paper-size network in float32: the compiled read within rounding."""
    module = _paper_memory_float32(content)
    state = NumpyMANN.state_to_numpy(module.initial_state(1))
    numpy_engine, compiled = _engine(module, False, 1), _engine(module, True, 1)
    rows = np.random.default_rng(0).random((64, 45), dtype=np.float32)
    for inputs in rows[:20]:  # a memory with a history of writes
        _, state = numpy_engine.step(inputs[None], state)
    expected = numpy_engine.predict_logits(rows[20:], state)
    got = compiled.predict_logits(rows[20:], state)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
    # Features only (the compiled LSTM cells too): base = the shared terms.
    base = numpy_engine.prepare(state, rows[0, 40:])
    expected = numpy_engine.predict_logits(rows[20:, :40], state, base)
    got = compiled.predict_logits(rows[20:, :40], state, base)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 5e-7), (np.float64, 1e-11)])
def test_exp_of_a_cosine(dtype, rtol):
    """The compiled read's exp, on [-2, 2] (cosines, with margin)."""
    x = np.linspace(-2.0, 2.0, 4001).astype(dtype)
    got = np.array([_jit_step._exp_unit(v) for v in x])
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)), rtol=rtol)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 4.5e-7), (np.float64, 1.2e-11)])
@pytest.mark.parametrize(
    "span,halvings",
    [(0.7, 0), (2.0, 0), (3.5, 1), (8.0, 2), (9.0, 3), (32.0, 4), (40.0, None)],
)
def test_exp_of_scaled_cosines(dtype, rtol, span, halvings):
    """The compiled reads' exp for key strengths: exp(v - max) over a span.

    Its error doubles with each halving of the span (``halvings``); past
    ``_MAX_HALVINGS`` the kernels' ``np.exp`` takes over.
    """
    top = 1.5
    v = top - np.random.default_rng(0).uniform(0.0, span, 1000)
    v[:2] = top, top - span
    v = v.astype(dtype)
    expected = np.exp(v.astype(np.float64) - top)
    got = v.copy()
    total = _jit_step._exp_shifted(got, dtype(top), span)
    assert got.dtype == dtype and got[0] == 1.0  # the max maps to exactly 1
    if halvings is None:
        assert span > 2.0 ** (_jit_step._MAX_HALVINGS + 1)
        # float32: the rounding of v - top (to 2e-6 near -32) dominates
        tol = 4e-6 if dtype == np.float32 else 1e-15
    else:
        assert 2.0 ** (halvings - 1) < span / 2.0 <= 2.0**halvings or halvings == 0
        tol = rtol * 2.0**halvings
    np.testing.assert_allclose(got, expected, rtol=tol)
    np.testing.assert_allclose(total, expected.sum(), rtol=tol)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
def test_rational_tanh_in_float32():
    """The compiled batch LSTM's tanh, including its clamp (|x| > 7.9)."""
    x = np.concatenate([np.linspace(-12, 12, 24001), [-1e30, 1e-30, 0.0, 1e30]])
    x = x.astype(np.float32)
    got = np.array([_jit_step._tanh_rational(v) for v in x])
    np.testing.assert_array_equal(got.astype(np.float32), got)  # float32 math
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=0, atol=5e-7)


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("add", [True, False])
def test_compiled_batch_heads_equal_numpy(add):
    """Batch predict's fused head pass: bias, tanh and sigmoid as NumPy's."""
    rng = np.random.default_rng(0)
    R, W, n = 4, 40, 7
    head = (3 * rng.standard_normal((n, R * W + R + R * W))).astype(np.float32)
    b_head = rng.standard_normal(head.shape[1]).astype(np.float32)
    keys, gate, content = _jit_step.batch_heads(head.copy(), b_head, R, W, add)
    pre = head.astype(np.float64) + b_head
    np.testing.assert_allclose(
        keys, np.tanh(pre[:, : R * W]).reshape(n, R, W), atol=6e-7
    )
    sigmoid = 0.5 * (np.tanh(0.5 * pre[:, R * W : R * W + R]) + 1.0)
    np.testing.assert_allclose(gate, sigmoid, atol=6e-7)
    if add:
        expected = np.tanh(pre[:, R * W + R :]).reshape(n, R, W)
        np.testing.assert_allclose(content, expected, atol=6e-7)
    else:
        np.testing.assert_array_equal(content, keys)
    assert keys.dtype == gate.dtype == content.dtype == np.float32


@pytest.mark.skipif(not _jit_step.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("content", ["key", "add"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_compiled_float32_stream_equals_numpy(content, n_threads):
    """float32 streaming (rational tanh, polynomial exp) within rounding."""
    module = _paper_memory_float32(content)
    rows = np.random.default_rng(0).random((30, 45), dtype=np.float32)
    engines = [_engine(module, False, 1), _engine(module, True, n_threads)]
    states = [NumpyMANN.state_to_numpy(module.initial_state(1)) for _ in engines]
    for inputs in rows:
        out = []
        for k, engine in enumerate(engines):
            logits, pending = engine.step_one(inputs[:40], states[k], inputs[40:])
            states[k] = engine.commit(pending, states[k])
            out.append([logits, pending.base, *states[k][:3], *states[k].memory])
        for a, b in zip(*out, strict=True):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("jit,n_threads", ENGINES)
@pytest.mark.parametrize("controller,feedback,content,raw", STRENGTH_OPTIONS)
def test_key_strength_paths_equal_torch(
    controller, feedback, content, raw, jit, n_threads
):
    """With key strengths: the NumPy batch step, the single-row step (NumPy or
    compiled) and the factored predict all give the torch step's logits and
    state."""
    module = _small(controller, feedback, content, raw, key_strength=True)
    fast = _engine(module, jit, n_threads)
    state_t = module.initial_state(1)
    ref = one = NumpyMANN.state_to_numpy(module.initial_state(1))
    betas = []
    with torch.no_grad():
        for inputs in _stream(module, 20):
            betas.append(torch.nn.functional.softplus(module.head(state_t.h)[:, -2:]))
            rows = np.random.default_rng(len(betas)).random((4, 15))
            expected_rows, _ = fast.step(rows, ref)
            np.testing.assert_allclose(
                fast.predict_logits(rows, ref), expected_rows, rtol=1e-9, atol=1e-10
            )
            logits_t, state_t = module.step(inputs, state_t)
            logits_ref, ref = fast.step(inputs.numpy(), ref)
            x, label = inputs.numpy()[0, :12], inputs.numpy()[0, 12:]
            logits_one, pending = fast.step_one(x, one, label)
            one = fast.commit(pending, one)
            for got in (logits_ref[0], logits_one):
                np.testing.assert_allclose(
                    got, logits_t.numpy()[0], rtol=1e-9, atol=1e-10
                )
    for a, b, c in zip(
        [*one[:3], *one.memory],
        [*ref[:3], *ref.memory],
        [*state_t[:3], *state_t.memory],
    ):
        np.testing.assert_allclose(a, c.numpy(), rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(b, c.numpy(), rtol=1e-9, atol=1e-10)
    betas = torch.cat(betas)
    assert betas.min() < 0.5 and betas.max() > 4.0  # strengths far from 1 were used
