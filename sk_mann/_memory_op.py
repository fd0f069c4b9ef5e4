"""The memory step of an eager training batch in two numba kernels.

In eager mode (no ``torch.compile``), the memory step
(:func:`sk_mann.memory.lrua_step_fused`) is some 25 tensor operations per
time step, each with its own fixed cost and its own pass over ``(batch, heads,
slots)`` or ``(batch, slots, width)`` arrays, and as many more in backward.
Here the step of one episode is one pass of loops over its values, the
episodes of a batch split over threads in one parallel region:
:func:`forward`, and :func:`backward` for its gradient, written out by hand
(the derivation is in the comments) and tested against autograd through the
reference step :func:`sk_mann.memory.lrua_step`.

The memory is kept transposed, ``(batch, width, slots)``: every loop then runs
over the slots (128 in the paper, a multiple of the SIMD width) instead of a
slot's 40 values (five vectors and a remainder), several times faster.

:func:`lrua_memory_step` is the step as one autograd node. The network uses it
in eager mode on CPU tensors where numba is installed (:func:`usable`);
compiled, inductor's fused loops measured faster than these kernels called
from the graph as a custom operator (0.84x: the call's fixed costs, twice a
step, outweigh the kernels' gain; ``benchmarks/results/speed_notes.md``).
"""

from __future__ import annotations

import math
import os
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _jit_step
from .memory import MemoryState

__all__ = ["AVAILABLE", "lrua_memory_step", "usable"]

#: Whether the kernels can run (numba importable, ``SK_MANN_JIT`` not 0, and
#: ``SK_MANN_MEMORY_OP`` not 0).
AVAILABLE = _jit_step.AVAILABLE and os.environ.get("SK_MANN_MEMORY_OP", "1") != "0"
_EPS = 1e-8  # same guard as sk_mann.memory._EPS
#: Whether :meth:`sk_mann.model.MANN.forward` uses the kernels where usable.
ENABLED = True


def usable(x: Tensor) -> bool:
    """Whether a network computing on tensors like ``x`` can use the kernels."""
    return (
        AVAILABLE
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
    )


def _renamed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A copy of the function ``fn`` called ``name``."""
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = name
    return copy


if AVAILABLE:
    import numba
    from numba import njit, prange

    from ._jit_step import _exp_shifted, _least_used

    _OPTS = {
        "cache": True,
        "nogil": True,
        "error_model": "numpy",
        "fastmath": {"reassoc", "contract", "nsz", "arcp"},
    }

    @njit(**_OPTS)
    def _argmin(v):  # pragma: no cover - compiled
        """Index of the smallest value, the lowest among ties (``torch.argmin``)."""
        best = 0
        for i in range(1, v.shape[0]):
            if v[i] < v[best]:
                best = i
        return best

    @njit(**_OPTS)
    def _write_weights(gate, rw_prev, lu_prev, out):  # pragma: no cover - compiled
        """Eq. 7 as ``torch.lerp(lu_prev, rw_prev, gate)`` (same rounding)."""
        for h in range(out.shape[0]):
            g = gate[h]
            for i in range(out.shape[1]):
                out[h, i] = lu_prev[i] + g * (rw_prev[h, i] - lu_prev[i])

    @njit(**_OPTS)
    def _episode_forward(  # pragma: no cover - compiled
        mem_t,
        usage_prev,
        rw_prev,
        lu_prev,
        keys,
        gate,
        content,
        beta,
        gamma,
        raw,
        new_t,
        reads,
        read_w,
        write_w,
        usage,
        sims,
        knorm,
        snorm,
    ):
        """One episode's step; memories transposed, ``(width, slots)``."""
        H, N = rw_prev.shape
        W = mem_t.shape[0]
        zero = mem_t.dtype.type(0.0)
        erased = _argmin(usage_prev)
        _write_weights(gate, rw_prev, lu_prev, write_w)
        for w in range(W):  # erase the least-used slot, then eq. 8
            row, old = new_t[w], mem_t[w]
            for i in range(N):
                row[i] = old[i]
            row[erased] = zero
            for h in range(H):
                c, a = content[h, w], write_w[h]
                for i in range(N):
                    row[i] += c * a[i]
        src = new_t if raw else mem_t
        for i in range(N):
            snorm[i] = zero
        for w in range(W):
            s = src[w]
            for i in range(N):
                snorm[i] += s[i] * s[i]
        for i in range(N):
            snorm[i] = math.sqrt(snorm[i])
        for h in range(H):  # eq. 2, then the softmax of eq. 3
            acc = zero
            for w in range(W):
                acc += keys[h, w] * keys[h, w]
            knorm[h] = math.sqrt(acc)
            sim = sims[h]
            for i in range(N):
                sim[i] = zero
            for w in range(W):
                k, s = keys[h, w], src[w]
                for i in range(N):
                    sim[i] += k * s[i]
            z = read_w[h]
            top, bottom = -np.inf, np.inf
            for i in range(N):
                sim[i] = sim[i] / (knorm[h] * snorm[i] + _EPS)
                z[i] = sim[i] * beta[h]
                top = max(top, z[i])
                bottom = min(bottom, z[i])
            inv = 1.0 / _exp_shifted(z, top, top - bottom)
            for i in range(N):
                z[i] *= inv
            for w in range(W):  # eq. 4
                s, acc = src[w], zero
                for i in range(N):
                    acc += z[i] * s[i]
                reads[h, w] = acc
        for i in range(N):  # eq. 5
            usage[i] = gamma * usage_prev[i]
        for h in range(H):
            for i in range(N):
                usage[i] += read_w[h, i] + write_w[h, i]

    def _forward(  # pragma: no cover - compiled
        mem_t, usage_prev, rw_prev, lu_prev, keys, gate, content, beta, gamma, raw
    ):
        """The step of every episode of a batch (episodes split over threads).

        Returns ``reads, new_mem_t, read_w, usage, least_used`` and, for
        :func:`backward`, ``sims`` (the cosines), ``knorm`` and ``snorm``
        (the keys' and the read memory's slot norms).
        """
        B, W, N = mem_t.shape
        H = keys.shape[1]
        dt = mem_t.dtype
        new_t = np.empty((B, W, N), dt)
        reads = np.empty((B, H, W), dt)
        read_w = np.empty((B, H, N), dt)
        usage = np.empty((B, N), dt)
        least_used = np.empty((B, N), dt)
        sims = np.empty((B, H, N), dt)
        knorm = np.empty((B, H), dt)
        snorm = np.empty((B, N), dt)
        for b in prange(B):
            write_w = np.empty((H, N), dt)
            _episode_forward(
                mem_t[b],
                usage_prev[b],
                rw_prev[b],
                lu_prev[b],
                keys[b],
                gate[b],
                content[b],
                beta[b],
                gamma,
                raw,
                new_t[b],
                reads[b],
                read_w[b],
                write_w,
                usage[b],
                sims[b],
                knorm[b],
                snorm[b],
            )
            least_used[b] = _least_used(usage[b], H)
        return reads, new_t, read_w, usage, least_used, sims, knorm, snorm

    @njit(**_OPTS)
    def _episode_backward(  # pragma: no cover - compiled
        mem_t, new_t, usage_prev, rw_prev, lu_prev, keys, gate, content, beta,
        raw, read_w, sims, knorm, snorm, g_reads, g_new, g_read_w,
        g_mem, g_rw_prev, g_keys, g_gate, g_content, g_beta,
    ):  # fmt: skip
        """Gradients of one episode's step (``g_*`` in: outputs, out: inputs)."""
        H, N = rw_prev.shape
        W = mem_t.shape[0]
        zero = mem_t.dtype.type(0.0)
        src = new_t if raw else mem_t
        # g_src: the gradient of the memory that was read, (width, slots).
        g_src = np.zeros((W, N), mem_t.dtype)
        g_rw = np.empty(N, mem_t.dtype)
        q = np.empty(N, mem_t.dtype)
        g_sn = np.zeros(N, mem_t.dtype)
        for h in range(H):
            rw, sim = read_w[h], sims[h]
            # reads[h, w] = sum_i rw[i] src[w, i]
            for i in range(N):
                g_rw[i] = g_read_w[h, i]
            for w in range(W):
                gr, s, gs = g_reads[h, w], src[w], g_src[w]
                for i in range(N):
                    g_rw[i] += gr * s[i]
                    gs[i] += gr * rw[i]
            # read_w = softmax(beta * sim): g_z = rw (g_rw - <rw, g_rw>)
            dot = zero
            for i in range(N):
                dot += rw[i] * g_rw[i]
            gb, g_kn, kn = zero, zero, knorm[h]
            for i in range(N):
                g_z = rw[i] * (g_rw[i] - dot)
                gb += g_z * sim[i]
                # sim = d / den, den = kn sn + eps: g_d = g_sim / den,
                # g_den = -g_sim sim / den
                den = kn * snorm[i] + _EPS
                g_sim = g_z * beta[h]
                q[i] = g_sim / den
                g_den = -q[i] * sim[i]
                g_kn += g_den * snorm[i]
                g_sn[i] += g_den * kn
            g_beta[h] = gb
            # d[i] = sum_w keys[h, w] src[w, i]; kn = ||keys[h]||
            scale = g_kn / kn if kn > 0 else zero
            for w in range(W):
                s, gs, k = src[w], g_src[w], keys[h, w]
                acc = zero
                for i in range(N):
                    acc += q[i] * s[i]
                    gs[i] += q[i] * k
                g_keys[h, w] = acc + scale * k
        for i in range(N):  # sn[i] = ||src[:, i]||
            g_sn[i] = g_sn[i] / snorm[i] if snorm[i] > 0 else zero
        for w in range(W):
            s, gs = src[w], g_src[w]
            for i in range(N):
                gs[i] += g_sn[i] * s[i]
        # new = erase(mem) + sum_h content[h, w] write_w[h, i]
        if raw:  # the read memory is the new one
            for w in range(W):
                gs, gn = g_src[w], g_new[w]
                for i in range(N):
                    gs[i] += gn[i]
            g_nw = g_src
        else:
            g_nw = g_new
        erased = _argmin(usage_prev)
        write_w = np.empty((H, N), mem_t.dtype)
        _write_weights(gate, rw_prev, lu_prev, write_w)
        for w in range(W):
            gn, gm = g_nw[w], g_mem[w]
            for i in range(N):
                gm[i] = gn[i]
            gm[erased] = zero
            if not raw:
                gs = g_src[w]
                for i in range(N):
                    gm[i] += gs[i]
        g_ww = np.zeros((H, N), mem_t.dtype)
        for h in range(H):
            a, gw = write_w[h], g_ww[h]
            for w in range(W):
                gn, c = g_nw[w], content[h, w]
                acc = zero
                for i in range(N):
                    acc += a[i] * gn[i]
                    gw[i] += c * gn[i]
                g_content[h, w] = acc
            # write_w = lu_prev + gate (rw_prev - lu_prev)
            gg, g = zero, gate[h]
            for i in range(N):
                gg += gw[i] * (rw_prev[h, i] - lu_prev[i])
                g_rw_prev[h, i] = g * gw[i]
            g_gate[h] = gg

    def _backward(  # pragma: no cover - compiled
        mem_t, new_t, usage_prev, rw_prev, lu_prev, keys, gate, content, beta,
        raw, read_w, sims, knorm, snorm, g_reads, g_new, g_read_w,
    ):  # fmt: skip
        """Gradients of :func:`forward` with respect to its differentiable inputs.

        Returns the gradients of ``mem_t, rw_prev, keys, gate, content, beta``.
        """
        g_mem, g_rw_prev = np.empty_like(mem_t), np.empty_like(rw_prev)
        g_keys, g_gate = np.empty_like(keys), np.empty_like(gate)
        g_content, g_beta = np.empty_like(content), np.empty_like(beta)
        for b in prange(mem_t.shape[0]):
            _episode_backward(
                mem_t[b], new_t[b], usage_prev[b], rw_prev[b], lu_prev[b],
                keys[b], gate[b], content[b], beta[b], raw, read_w[b], sims[b],
                knorm[b], snorm[b], g_reads[b], g_new[b], g_read_w[b],
                g_mem[b], g_rw_prev[b], g_keys[b], g_gate[b], g_content[b],
                g_beta[b],
            )  # fmt: skip
        return g_mem, g_rw_prev, g_keys, g_gate, g_content, g_beta

    # Each kernel twice: episodes over threads, and in one thread (for one
    # torch thread, and for a process forked after a parallel region ran,
    # which numba's OpenMP pool would terminate). numba's on-disk cache knows
    # a function by its name and line, not by its compile flags, so each
    # variant gets a name of its own.
    forward = njit(**_OPTS, parallel=True)(_renamed(_forward, "forward"))
    backward = njit(**_OPTS, parallel=True)(_renamed(_backward, "backward"))
    forward_1 = njit(**_OPTS)(_renamed(_forward, "forward_1"))
    backward_1 = njit(**_OPTS)(_renamed(_backward, "backward_1"))


def _kernels() -> tuple:
    """The kernels for torch's number of threads (numba's set to match).

    One thread in a process forked after a parallel region ran
    (:func:`sk_mann._jit_step.safe_threads`).
    """
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    threads = _jit_step.safe_threads(threads)
    if threads <= 1:
        return forward_1, backward_1
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return forward, backward


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    """Contiguous NumPy views (copies where not contiguous) for the kernels."""
    return [t.detach().contiguous().numpy() for t in tensors]


class _LRUAStep(torch.autograd.Function):
    """:func:`forward` and :func:`backward` as one autograd node.

    Inputs: ``mem_t, usage, rw_prev, lu_prev, keys, gate, content, beta,
    gamma, raw`` (a :class:`~sk_mann.memory.MemoryState`'s fields in order,
    then the step's); the usage and the least-used mask get no gradient (the
    reference step uses them only through argmins).
    """

    @staticmethod
    def forward(ctx, *inputs):  # type: ignore[override]
        tensors, (gamma, raw) = inputs[:8], inputs[8:]
        arrays = _arrays(*tensors)
        kernel, ctx.backward_kernel = _kernels()
        dt = arrays[0].dtype.type
        out = [torch.from_numpy(a) for a in kernel(*arrays, dt(gamma), raw)]
        reads, new_t, read_w, usage, least_used, sims, knorm, snorm = out
        ctx.mark_non_differentiable(usage, least_used)
        ctx.raw = raw
        ctx.save_for_backward(*tensors, new_t, read_w, sims, knorm, snorm)
        return reads, new_t, read_w, usage, least_used

    @staticmethod
    def backward(ctx, g_reads, g_new, g_read_w, *_):  # type: ignore[override]
        mem_t, *state, beta, new_t = ctx.saved_tensors[:9]
        saved = _arrays(mem_t, new_t, *state, beta, *ctx.saved_tensors[9:])
        grads = _arrays(g_reads, g_new, g_read_w)
        g = ctx.backward_kernel(*saved[:9], ctx.raw, *saved[9:], *grads)
        g_mem, g_rw_prev, g_keys, g_gate, g_content, g_beta = map(torch.from_numpy, g)
        g_in = (g_mem, None, g_rw_prev, None, g_keys, g_gate, g_content, g_beta)
        return (*g_in, None, None)  # gamma and raw: not tensors


def lrua_memory_step(
    state: MemoryState,
    keys: Tensor,
    gate: Tensor,
    content: Tensor,
    *,
    gamma: float = 0.95,
    read_after_write: bool = True,
    strength: Tensor | None = None,
) -> tuple[Tensor, MemoryState]:
    """:func:`sk_mann.memory.lrua_step_fused` with the memory transposed.

    Same arguments and results, except that ``state.memory`` (in and out) is
    ``M`` transposed, of shape ``(batch, width, slots)``.
    """
    if strength is None:
        strength = keys.new_ones(keys.shape[:2])
    reads, new_t, read_w, usage, least_used = _LRUAStep.apply(
        *state, keys, gate, content, strength, float(gamma), bool(read_after_write)
    )
    return reads, MemoryState(new_t, usage, read_w, least_used)
