"""Compiled (numba) kernels of the streaming step and of batch prediction.

:class:`sk_mann._numpy_step.NumpyMANN` streams one sample with ~45 NumPy calls,
each with a fixed cost of 1-2 us, and reads 2.6 MB of weights per sample, more
than one core's L2 cache holds. ``step`` does the same step in one call,
the usage it leaves included, so that learning a predicted sample calls no
kernel; it splits the two large products (the controller's input and
recurrent matrices, in one parallel region) over threads by controller unit:
each thread always reads the same rows, so each core reads only its share of
the weights (and keeps it cached where its cache allows).
On the project's 2-core machine this is what pays: a sample's step is bound by
reading the weights, not by arithmetic (``benchmarks/results/speed_notes.md``).

For batch prediction (``NumpyMANN.predict_logits``), ``batch_read_weights``
and ``batch_lstm`` replace the elementwise NumPy passes between the matrix
products, which stay BLAS. Where a loop would call ``exp`` or ``tanh`` (scalar
libm calls, which keep it from vectorising) float32 code uses
:func:`_tanh_rational` and, for cosines, :func:`_exp_unit` (scaled by key
strengths: :func:`_exp_shifted`): approximations made of multiplications and
additions, tested against NumPy.

numba is optional (``pip install sk_mann[fast]``). Without it, or with
``SK_MANN_JIT=0`` in the environment, :data:`AVAILABLE` is False and streaming
uses the NumPy step. The NumPy step remains the reference: tests check that
both agree.

The weights are read in torch's layout (one row per output unit) from NumPy
views of the parameters, so in-place weight updates are seen.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "AVAILABLE",
    "safe_threads",
    "all_finite",
    "batch_lstm",
    "batch_read_weights",
    "label_terms",
    "prepare",
    "step",
]

try:  # pragma: no branch - which branch runs depends on the environment
    if os.environ.get("SK_MANN_JIT", "1") == "0":
        raise ImportError("disabled by SK_MANN_JIT=0")
    from numba import njit, prange

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where numba is absent
    AVAILABLE = False

#: Whether this process has run one of numba's parallel regions (here or in
#: :mod:`sk_mann._memory_op`), and whether it was forked from one that had;
#: see :func:`safe_threads`.
_RAN_PARALLEL = False
_FORKED_AFTER_PARALLEL = False


def _after_fork_in_child() -> None:
    global _FORKED_AFTER_PARALLEL
    _FORKED_AFTER_PARALLEL = _FORKED_AFTER_PARALLEL or _RAN_PARALLEL


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def safe_threads(n: int) -> int:
    """``n`` threads for a parallel kernel, or 1 in a process forked too late.

    numba's OpenMP threading layer terminates a forked process that starts a
    parallel region after its parent ran one ("Terminating: fork() called
    from a process already using GNU OpenMP"): a process forked after this
    one's kernels ran on threads runs them on one thread (same results: the
    kernels' sums do not depend on the split).
    """
    global _RAN_PARALLEL
    if n <= 1 or _FORKED_AFTER_PARALLEL:
        return 1
    _RAN_PARALLEL = True
    return n


_EPS = 1e-8  # same guard as sk_mann.memory._EPS
#: 1 / k! (the Taylor coefficients of exp).
_C = tuple(1.0 / math.factorial(k) for k in range(12))
#: The most halvings :func:`_exp_shifted` takes before it calls libm's ``exp``
#: (spans up to 32: key strengths up to 16 when cosines span [-1, 1]).
_MAX_HALVINGS = 4
#: tanh(x) ~ x P(x^2) / Q(x^2) on [-_TANH_CLAMP, _TANH_CLAMP], +-1 beyond (in
#: float32): the rational approximation Eigen uses for float32 (P: x^1..x^13,
#: Q: x^0..x^6).
_TANH_P = (
    4.89352455891786e-03,
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
)
_TANH_Q = (
    4.89352518554385e-03,
    2.26843463243900e-03,
    1.18534705686654e-04,
    1.19825839466702e-06,
)
_TANH_CLAMP = 7.90531110763549805
# Reassociation lets the dot products use SIMD; no finite-math assumptions.
_FLAGS = {"reassoc", "contract", "nsz", "arcp"}
#: Options of every kernel. NumPy's error model: a division by zero gives inf
#: or nan instead of a check per division, which kept loops from vectorising.
_JIT = {"cache": True, "fastmath": _FLAGS, "nogil": True, "error_model": "numpy"}

if AVAILABLE:
    # Loops index 1-D row views with a range variable, so that LLVM can prove
    # the indices non-negative and vectorise; products take four weight rows at
    # once (one load of the vector serves four rows), as BLAS's gemv does.

    @njit(cache=True, nogil=True, error_model="numpy")  # no fast-math: exact
    def all_finite(v):  # pragma: no cover - compiled
        """Whether every value of the 1-D array ``v`` is finite (no NaN, no inf).

        ``np.isfinite(v).all()`` in one vectorised pass, without NumPy's two
        calls (~4x faster for a 400-feature row).
        """
        bad = 0
        for i in range(v.shape[0]):
            bad |= not math.isfinite(v[i])
        return bad == 0

    @njit(**_JIT)
    def _dot(a, b):  # pragma: no cover - compiled
        """``a . b`` of two 1-D arrays of the same length."""
        s = a.dtype.type(0.0)
        for k in range(b.shape[0]):
            s += a[k] * b[k]
        return s

    @njit(**_JIT)
    def _dot4(w, r0, r1, r2, r3, start, v):  # pragma: no cover - compiled
        """``w[r, start:start + len(v)] . v`` for the four rows ``r0..r3``."""
        n = v.shape[0]
        w0 = w[r0, start : start + n]
        w1 = w[r1, start : start + n]
        w2 = w[r2, start : start + n]
        w3 = w[r3, start : start + n]
        s0 = s1 = s2 = s3 = w.dtype.type(0.0)
        for k in range(n):
            vk = v[k]
            s0 += w0[k] * vk
            s1 += w1[k] * vk
            s2 += w2[k] * vk
            s3 += w3[k] * vk
        return s0, s1, s2, s3

    @njit(**_JIT)
    def _gemv(w, start, v, lo, hi, out, reverse=False):  # pragma: no cover
        """``out[j] += w[j, start:start + len(v)] . v`` for rows ``lo:hi``.

        Rows four at a time, from ``lo`` up (or from ``hi`` down if
        ``reverse``); a row's sum is the same either way.
        """
        n = hi - lo
        j = 0
        while j + 4 <= n:
            r = hi - 4 - j if reverse else lo + j
            s0, s1, s2, s3 = _dot4(w, r, r + 1, r + 2, r + 3, start, v)
            out[r] += s0
            out[r + 1] += s1
            out[r + 2] += s2
            out[r + 3] += s3
            j += 4
        while j < n:  # the same reduction as in a block of four: a row's sum
            r = hi - 1 - j if reverse else lo + j
            s0, _, _, _ = _dot4(w, r, r, r, r, start, v)  # ignores the split
            out[r] += s0
            j += 1

    @njit(**_JIT)
    def _tanh(x, one):  # pragma: no cover - compiled
        """``tanh(x)`` from one ``exp`` (``one``: 1 in the dtype of ``x``).

        ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)``, about 2.5x faster than
        libm's tanh here; its relative error stays within ~1e-5 (float32) and
        ~1e-13 (float64), far below what separates two predictions.
        """
        e = np.exp(-(abs(x) + abs(x)))
        t = (one - e) / (one + e)
        return t if x >= 0 else -t

    @njit(**_JIT)
    def _units(  # pragma: no cover - compiled
        lo,
        hi,
        w_in,
        x,
        base,
        have_base,
        terms,
        w_rec,
        rec,
        c_prev,
        lstm,
        h,
        c,
        reverse,
    ):
        """Controller units ``lo:hi``: their gate rows, then ``h`` and ``c``.

        ``base`` holds the gate terms that do not depend on ``x`` (see
        :func:`prepare`); unless ``have_base``, those of the units' rows are
        computed into it too. ``reverse`` reads the weights in the opposite
        order (the results are the same bits): alternate steps do, so that a
        step starts with the weights the previous one read last, still in
        cache when a core's share of them is larger than its cache.
        """
        H = h.shape[0]
        one = base.dtype.type(1.0)  # keeps float32 math in float32
        n_gates = base.shape[0] // H
        args = (lo, hi, H, n_gates, terms, w_rec, rec, base)
        if not have_base and not reverse:
            _base_rows(*args, False)
        if not lstm:  # one gate row per unit
            pre = np.zeros(H, base.dtype)
            _gemv(w_in, 0, x, lo, hi, pre)
            if not have_base and reverse:
                _base_rows(*args, True)
            for u in range(lo, hi):
                h[u] = _tanh(pre[u] + base[u], one)
                c[u] = c_prev[u]
            return
        pre = np.empty((4, hi - lo), base.dtype)  # the gates' x products
        for k in range(hi - lo):
            u = hi - 1 - k if reverse else lo + k
            i, f, g, o = _dot4(w_in, u, H + u, 2 * H + u, 3 * H + u, 0, x)
            pre[0, u - lo], pre[1, u - lo], pre[2, u - lo] = i, f, g
            pre[3, u - lo] = o
        if not have_base and reverse:
            _base_rows(*args, True)
        for gate in range(4):
            for k in range(hi - lo):
                pre[gate, k] += base[gate * H + lo + k]
        hv, cv, cp = h[lo:hi], c[lo:hi], c_prev[lo:hi]
        if base.itemsize == 4:  # float32: one vectorised pass
            for k in range(hi - lo):
                hv[k], cv[k] = _lstm_cell(
                    pre[0, k], pre[1, k], pre[2, k], pre[3, k], cp[k]
                )
            return
        for k in range(hi - lo):
            i = one / (one + np.exp(-pre[0, k]))
            f = one / (one + np.exp(-pre[1, k]))
            o = one / (one + np.exp(-pre[3, k]))
            cv[k] = f * cp[k] + i * _tanh(pre[2, k], one)
            hv[k] = o * _tanh(cv[k], one)

    @njit(**_JIT, parallel=True)
    def step(  # pragma: no cover - compiled
        x,
        base,
        have_base,
        terms,
        rec,
        c_prev,
        usage_prev,
        gamma,
        n_reads,
        lstm,
        n_threads,
        reverse,
        w_in,
        w_rec,
        *read_args,
    ):
        """One whole step of one row, the next state's usage included.

        The controller's gate rows (split by unit over ``n_threads`` threads:
        each thread always reads the same rows of ``w_in`` and ``w_rec``), then
        :func:`_read_and_output` with ``read_args``, then the usage and
        least-used mask (eq. 8) the step leaves. Everything that learning this
        row needs is computed here: committing it calls no kernel.

        Parameters
        ----------
        x : (n_inputs,) features
        base : (G,) the gate terms that do not depend on ``x``,
            ``b + W_label y + W_rec rec`` (see :func:`prepare`); computed into
            it unless ``have_base``
        have_base : bool
        terms : (G,) ``b + W_label y``, the previous label's gate terms
            (:func:`label_terms`)
        rec : (n_rec,) ``[h; reads]`` of the previous step as ``w_rec`` reads
            it (empty when the network has none; ``w_rec`` is then any 2-D
            array of the weights' dtype)
        c_prev : (H,) previous cell state (carried unchanged by an RNN)
        usage_prev : (N,)
        gamma : decay of the usage
        n_reads : heads (the least-used mask marks this many slots)
        lstm : bool
        n_threads : int
            Split of the units over threads (1: no threading).
        reverse : bool
            Read the controller's weights in the opposite order (same result;
            see :func:`_units`).
        w_in, w_rec : the controller's weights (torch layout)
        *read_args
            ``w_head, b_head, memory, read_w_prev, least_used, w_out, b_out,
            add_content, read_after_write, key_strength``: the arguments of
            :func:`_read_and_output` after ``h``, ``reads`` and ``usage_prev``.

        Returns
        -------
        logits : (n_outputs,)
        hr : (H + R * W,), ``[h_t; r_t]`` (one buffer: the next step's
            recurrent input)
        c : (H,)
        new_memory : (N, W), ``M_t``
        read_w : (R, N)
        usage : (N,)
        least_used : (N,)
        """
        H = c_prev.shape[0]
        memory, read_w_prev = read_args[2], read_args[3]
        hr = np.empty(H + read_w_prev.shape[0] * memory.shape[1], base.dtype)
        h = hr[:H]
        c = np.empty(H, base.dtype)
        units = (w_in, x, base, have_base, terms, w_rec, rec, c_prev, lstm)
        units = (*units, h, c, reverse)
        if n_threads <= 1:
            _units(0, H, *units)
        else:
            for t in prange(n_threads):
                _units(t * H // n_threads, (t + 1) * H // n_threads, *units)
        w_head, b_head, memory, read_w_prev, least_used = read_args[:5]
        logits, new_memory, read_w, write_w = _read_and_output(
            h,
            hr[H:],
            w_head,
            b_head,
            memory,
            usage_prev,
            read_w_prev,
            least_used,
            *read_args[5:],
        )
        # No array expressions in this function: parallel=True would make
        # each one a parallel region of its own (~3 us apiece).
        usage = _usage(usage_prev, read_w, write_w, gamma)
        return logits, hr, c, new_memory, read_w, usage, _least_used(usage, n_reads)

    @njit(**_JIT)
    def _usage(usage_prev, read_w, write_w, gamma):  # pragma: no cover - compiled
        """Eq. 8: ``gamma * usage_prev + sum of the read and write weights``."""
        usage = np.empty_like(usage_prev)
        for i in range(usage.shape[0]):
            usage[i] = gamma * usage_prev[i]
        for r in range(read_w.shape[0]):
            for i in range(usage.shape[0]):
                usage[i] += read_w[r, i] + write_w[r, i]
        return usage

    @njit(**_JIT, inline="always")
    def _write_weights(gate, read_w_prev, least_used, out):  # pragma: no cover
        """One head's LRUA write weights (eq. 7) into ``out`` (N,)."""
        for i in range(out.shape[0]):
            out[i] = gate * (read_w_prev[i] - least_used[i]) + least_used[i]

    @njit(**_JIT)
    def _read_and_output(  # pragma: no cover - compiled
        h,
        reads,
        w_head,
        b_head,
        memory,
        usage,
        read_w_prev,
        least_used,
        w_out,
        b_out,
        add_content,
        read_after_write,
        key_strength,
    ):
        """Heads, LRUA write (eq. 7), content read (into ``reads``) and logits.

        ``key_strength``: the last ``R`` head outputs are the heads' key
        strengths ``beta = softplus(.)``, which multiply the cosines.

        Returns
        -------
        logits : (n_outputs,)
        new_memory : (N, W), ``M_t``
        read_w : (R, N)
        write_w : (R, N)
        """
        R, N = read_w_prev.shape
        W = memory.shape[1]
        H = h.shape[0]
        one = memory.dtype.type(1.0)
        head = b_head.copy()
        _gemv(w_head, 0, h, 0, head.shape[0], head)
        keys = np.empty((R, W), memory.dtype)
        content = np.empty((R, W), memory.dtype)
        f32 = memory.itemsize == 4  # float32: vectorisable tanh and exp
        for r in range(R):
            for k in range(W):
                v = head[r * W + k]
                keys[r, k] = _tanh_rational(v) if f32 else _tanh(v, one)
                if add_content:
                    v = head[R * W + R + r * W + k]
                    content[r, k] = _tanh_rational(v) if f32 else _tanh(v, one)
                else:
                    content[r, k] = keys[r, k]
        write_w = np.empty((R, N), memory.dtype)
        for r in range(R):
            g = one / (one + np.exp(-head[R * W + r]))
            _write_weights(g, read_w_prev[r], least_used, write_w[r])
        new_memory = memory.copy()
        new_memory[np.argmin(usage)] = 0.0
        for i in range(N):
            row = new_memory[i]
            for r in range(R):
                wr = write_w[r, i]
                cr = content[r]
                for k in range(W):
                    row[k] += wr * cr[k]
        source = new_memory if read_after_write else memory
        eps = memory.dtype.type(_EPS)  # a float64 constant would promote
        key_norm = np.empty(R, memory.dtype)
        for r in range(R):
            key_norm[r] = np.sqrt(_dot(keys[r], keys[r]))
        read_w = np.empty((R, N), memory.dtype)
        for i in range(N):
            src = source[i]
            norm_i = np.sqrt(_dot(src, src))
            for r in range(R):
                read_w[r, i] = _dot(keys[r], src) / (key_norm[r] * norm_i + eps)
        for r in range(R):
            cos = read_w[r]
            if key_strength:  # beta * cosine: subtract the max before exp
                v = head[head.shape[0] - R + r]
                beta = max(v, 0.0) + np.log1p(np.exp(-abs(v)))  # softplus
                top = low = cos[0] * beta
                for i in range(N):
                    cos[i] *= beta
                    top = max(top, cos[i])
                    low = min(low, cos[i])
                _exp_shifted(cos, top, top - low)
            else:  # cosines lie in [-1, 1]: no max to subtract before exp
                for i in range(N):
                    cos[i] = _exp_unit(cos[i])
        reads[:] = 0.0
        for r in range(R):
            weights = read_w[r]
            weights /= weights.sum()
            out = reads[r * W : (r + 1) * W]
            for i in range(N):
                p = weights[i]
                src = source[i]
                for k in range(W):
                    out[k] += p * src[k]
        logits = b_out.copy()
        _gemv(w_out, 0, h, 0, logits.shape[0], logits)
        _gemv(w_out, H, reads, 0, logits.shape[0], logits)
        return logits, new_memory, read_w, write_w

    @njit(**_JIT)
    def label_terms(w_in, b_in, n_x, label):  # pragma: no cover - compiled
        """``b + W_label y``: the gate terms of the previous label ``y``.

        ``W_label`` is the last ``len(label)`` columns of ``w_in``, from column
        ``n_x``. They change only with the label (and the weights), so a stream
        computes them once per label code, not once per sample: reading one
        short run of each of the weight rows cost ~6 us a sample.
        """
        terms = b_in.copy()
        _gemv(w_in, n_x, label, 0, terms.shape[0], terms)
        return terms

    @njit(**_JIT)
    def _base_rows(  # pragma: no cover - compiled
        lo, hi, H, n_gates, terms, w_rec, rec, base, reverse
    ):
        """Gate rows of units ``lo:hi``: ``terms + W_rec rec``.

        ``reverse``: the gates and rows in the opposite order (same sums).
        """
        for k in range(n_gates):
            g = n_gates - 1 - k if reverse else k
            rows = g * H + lo, g * H + hi
            base[rows[0] : rows[1]] = terms[rows[0] : rows[1]]
            if rec.shape[0] > 0:
                _gemv(w_rec, 0, rec, rows[0], rows[1], base, reverse)

    @njit(**_JIT, parallel=True)
    def prepare(terms, w_rec, rec, H, n_threads):  # pragma: no cover
        """Gate terms of the next step that do not depend on its input.

        ``terms + W_rec rec`` (``terms``: :func:`label_terms` of the previous
        label), with ``rec = [h; reads]`` as the recurrent projection reads it
        (empty when the network has none; ``w_rec`` is then any 2-D array of
        the weights' dtype).
        """
        G = terms.shape[0]
        n_gates = G // H
        base = np.empty(G, terms.dtype)
        rows = (H, n_gates, terms, w_rec, rec, base, False)
        if n_threads <= 1:
            _base_rows(0, H, *rows)
        else:
            for t in prange(n_threads):
                _base_rows(t * H // n_threads, (t + 1) * H // n_threads, *rows)
        return base

    @njit(cache=True, nogil=True, error_model="numpy")
    def _least_used(usage, n):  # pragma: no cover - compiled
        """Mask of the ``n`` smallest usages, ties to the lower slot, NaN last.

        The first ``n`` of a stable argsort, in one pass: the ``n`` best so
        far are kept in order, and a slot enters only by being strictly
        smaller (NaN is larger than any number) than one of them.
        """
        n = min(n, usage.shape[0])
        best = np.empty(n, np.int64)
        count = 0
        for i in range(usage.shape[0]):
            v = usage[i]
            j = count  # where ``i`` goes among the best: after its equals
            while j > 0 and (
                v == v
                and (usage[best[j - 1]] != usage[best[j - 1]] or v < usage[best[j - 1]])
            ):
                j -= 1
            if j >= n:
                continue
            last = min(count, n - 1)
            for k in range(last, j, -1):
                best[k] = best[k - 1]
            best[j] = i
            count = min(count + 1, n)
        mask = np.zeros_like(usage)
        for k in range(count):
            mask[best[k]] = 1.0
        return mask

    @njit(**_JIT, inline="always")  # in the caller's loop, so that it vectorises
    def _exp_unit(x):  # pragma: no cover - compiled
        """``exp(x)`` for ``|x| <= 2`` (a cosine) as ``p(x / 4) ** 4``.

        ``p``: exp's Taylor polynomial to degree 11. Relative error on [-2, 2]
        (tested): ~3e-12 in float64, ~4e-7 in float32 (a few units in the last
        place, from the two squarings). Only multiplications and additions, so
        loops over it vectorise (libm's scalar ``exp`` does not).
        """
        dt = type(x)
        y = x * dt(0.25)
        p = dt(_C[11])
        p = p * y + dt(_C[10])
        p = p * y + dt(_C[9])
        p = p * y + dt(_C[8])
        p = p * y + dt(_C[7])
        p = p * y + dt(_C[6])
        p = p * y + dt(_C[5])
        p = p * y + dt(_C[4])
        p = p * y + dt(_C[3])
        p = p * y + dt(_C[2])
        p = p * y + dt(1.0)
        p = p * y + dt(1.0)
        p = p * p
        return p * p

    @njit(**_JIT, inline="always")
    def _exp_shifted(v, top, span):  # pragma: no cover - compiled
        """``v[i] = exp(v[i] - top)`` in place; returns their sum.

        For a softmax: ``top`` the max of ``v``, ``span`` at least
        ``top - min(v)``. As ``_exp_unit((v - top) / 2**m) ** (2**m)``, ``m``
        the fewest halvings that bring ``span`` within 2: multiplications and
        additions only, so the loops vectorise, as libm's scalar ``exp`` does
        not. Each squaring doubles the relative error (float32: about
        4e-7 x 2**m, tested), so a span over ``2 ** (_MAX_HALVINGS + 1)``
        takes libm's ``exp``.
        """
        dt = v.dtype.type
        total = dt(0.0)
        m = 0
        while span > 2.0 and m < _MAX_HALVINGS:
            span *= 0.5
            m += 1
        if span > 2.0:
            for i in range(v.shape[0]):
                e = np.exp(v[i] - top)
                v[i] = e
                total += e
            return total
        scale = dt(0.5**m)  # a power of two: the product is exact
        if m == 0:
            for i in range(v.shape[0]):
                e = _exp_unit((v[i] - top) * scale)
                v[i] = e
                total += e
            return total
        for i in range(v.shape[0]):
            v[i] = _exp_unit((v[i] - top) * scale)
        for _ in range(m - 1):
            for i in range(v.shape[0]):
                v[i] *= v[i]
        for i in range(v.shape[0]):
            e = v[i] * v[i]
            v[i] = e
            total += e
        return total

    @njit(**_JIT)
    def batch_read_weights(  # pragma: no cover - compiled
        A, P, KC, CC, keys, gate, read_w_prev, least_used, shared_norm2, strength
    ):
        """Content read weights of ``n`` rows written into one shared memory.

        The factored read of ``NumpyMANN.predict_logits`` (read after write),
        in one pass per row instead of ~15 array passes: each row's LRUA write
        weights ``ww`` (eq. 7), the norms of its written slots
        ``|M'_i|^2 + 2 ww . P + ww^T CC ww``, the cosines
        ``(A + KC ww) / (|k| |M_i| + eps)`` and their softmax (eq. 4).

        Parameters
        ----------
        A : (n, R, N) ``keys . M'_i`` (M': the shared memory, least-used slot
            erased)
        P : (n, R, N) ``content . M'_i`` (``A`` itself when the content is
            the key)
        KC, CC : (n, R, R) ``keys . content`` and ``content . content``
        keys : (n, R, W)
        gate : (n, R) write gates (after the sigmoid)
        read_w_prev, least_used : (R, N), (N,) of the shared state
        shared_norm2 : (N,) ``|M'_i|^2``
        strength : (n, R) key strengths ``beta`` that multiply the cosines, or
            (0, R): none (the paper's read)

        Returns
        -------
        read_w : (n, R, N)
        SW : (n, R, R) ``read_w . ww``: the written part of the reads is
            ``SW @ content``.
        """
        n, R, N = A.shape
        dt = A.dtype.type
        eps = dt(_EPS)
        read_w = np.empty((n, R, N), A.dtype)
        SW = np.empty((n, R, R), A.dtype)
        ww = np.empty((R, N), A.dtype)
        norm = np.empty(N, A.dtype)
        dots = np.empty(N, A.dtype)
        for b in range(n):
            for r in range(R):
                _write_weights(gate[b, r], read_w_prev[r], least_used, ww[r])
            norm[:] = shared_norm2
            for r in range(R):
                for i in range(N):
                    norm[i] += dt(2.0) * ww[r, i] * P[b, r, i]
                for r2 in range(R):
                    c = CC[b, r, r2]
                    for i in range(N):
                        norm[i] += c * ww[r, i] * ww[r2, i]
            for i in range(N):
                norm[i] = np.sqrt(max(norm[i], dt(0.0)))
            for r in range(R):
                key_norm = np.sqrt(_dot(keys[b, r], keys[b, r]))
                for i in range(N):
                    dots[i] = A[b, r, i]
                for r2 in range(R):
                    c = KC[b, r, r2]
                    for i in range(N):
                        dots[i] += c * ww[r2, i]
                out = read_w[b, r]
                total = dt(0.0)
                if strength.shape[0] > 0:  # beta * cosine: subtract the max
                    beta = strength[b, r]
                    top = low = beta * dots[0] / (key_norm * norm[0] + eps)
                    for i in range(N):
                        out[i] = beta * dots[i] / (key_norm * norm[i] + eps)
                        top = max(top, out[i])
                        low = min(low, out[i])
                    total = _exp_shifted(out, top, top - low)
                else:  # cosines lie in [-1, 1]: exp without a max
                    for i in range(N):
                        e = _exp_unit(dots[i] / (key_norm * norm[i] + eps))
                        out[i] = e
                        total += e
                inv = dt(1.0) / total
                for i in range(N):
                    out[i] *= inv
                for r2 in range(R):
                    SW[b, r, r2] = _dot(out, ww[r2])
        return read_w, SW

    @njit(**_JIT)
    def batch_heads(head, b_head, n_reads, width, add):  # pragma: no cover
        """Squashed head outputs of ``n`` rows (float32 batch predict).

        ``head``: (n, D) products ``h W_head^T``, ``b_head``: (D,). One pass
        adding the bias and squashing (NumPy: ~6 passes): keys and, if
        ``add``, content by ``tanh``, the write gates by the sigmoid
        ``(1 + tanh(x / 2)) / 2``; every ``tanh`` is :func:`_tanh_rational`.

        Returns
        -------
        keys : (n, n_reads, width)
        gate : (n, n_reads)
        content : (n, n_reads, width), ``keys`` itself unless ``add`` (boxed
            as another object with the same data)
        """
        n = head.shape[0]
        R, W = n_reads, width
        RW = R * W
        half = head.dtype.type(0.5)
        keys = np.empty((n, R, W), head.dtype)
        gate = np.empty((n, R), head.dtype)
        content = np.empty((n, R, W), head.dtype) if add else keys
        for b in range(n):
            row = head[b]
            k = keys[b].reshape(RW)  # contiguous: a view
            for j in range(RW):
                k[j] = _tanh_rational(row[j] + b_head[j])
            for r in range(R):
                x = row[RW + r] + b_head[RW + r]
                gate[b, r] = half + half * _tanh_rational(half * x)
            if add:
                c = content[b].reshape(RW)
                for j in range(RW):
                    c[j] = _tanh_rational(row[RW + R + j] + b_head[RW + R + j])
        return keys, gate, content

    @njit(**_JIT, inline="always")  # in the caller's loop, so that it vectorises
    def _tanh_rational(x):  # pragma: no cover - compiled
        """``tanh(x)`` by a rational function (float32; tested: abs error < 5e-7).

        No ``exp``: only multiplications, additions, one division and a clamp,
        so a loop over it vectorises.
        """
        dt = type(x)
        x = min(max(x, dt(-_TANH_CLAMP)), dt(_TANH_CLAMP))
        x2 = x * x
        p = dt(_TANH_P[6])
        p = p * x2 + dt(_TANH_P[5])
        p = p * x2 + dt(_TANH_P[4])
        p = p * x2 + dt(_TANH_P[3])
        p = p * x2 + dt(_TANH_P[2])
        p = p * x2 + dt(_TANH_P[1])
        p = p * x2 + dt(_TANH_P[0])
        q = dt(_TANH_Q[3])
        q = q * x2 + dt(_TANH_Q[2])
        q = q * x2 + dt(_TANH_Q[1])
        q = q * x2 + dt(_TANH_Q[0])
        return x * p / q

    @njit(**_JIT)
    def batch_lstm(gates, base, c_prev):  # pragma: no cover - compiled
        """LSTM cells of ``n`` rows that share ``c_prev`` (float32 batch predict).

        ``gates``: (n, 4H) input products ``x W_x^T`` (gate order i, f, g, o);
        ``base``: (4H,) the terms shared by every row; ``c_prev``: (H,). One
        pass instead of NumPy's ~10; sigmoids as ``(1 + tanh(x / 2)) / 2``.

        Returns
        -------
        h, c : (n, H)
        """
        n = gates.shape[0]
        H = c_prev.shape[0]
        h = np.empty((n, H), gates.dtype)
        c = np.empty((n, H), gates.dtype)
        for b in range(n):
            row, hb, cb = gates[b], h[b], c[b]
            for u in range(H):
                hb[u], cb[u] = _lstm_cell(
                    row[u] + base[u],
                    row[H + u] + base[H + u],
                    row[2 * H + u] + base[2 * H + u],
                    row[3 * H + u] + base[3 * H + u],
                    c_prev[u],
                )
        return h, c

    @njit(**_JIT, inline="always")  # LLVM alone did not inline it (8x slower)
    def _lstm_cell(i, f, g, o, c_prev):  # pragma: no cover - compiled
        """``(h, c)`` of one LSTM unit from its gate pre-activations (float32).

        Sigmoids as ``(1 + tanh(x / 2)) / 2``; every ``tanh`` is
        :func:`_tanh_rational`, so loops over units vectorise.
        """
        half = type(i)(0.5)
        i = half + half * _tanh_rational(half * i)
        f = half + half * _tanh_rational(half * f)
        o = half + half * _tanh_rational(half * o)
        c = f * c_prev + i * _tanh_rational(g)
        return o * _tanh_rational(c), c
