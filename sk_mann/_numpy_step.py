"""A NumPy mirror of :meth:`sk_mann.model.MANN.step` for streaming on the CPU.

At batch size 1 a step is ~40 tiny tensor operations, and torch's per-operation
dispatch dominates; NumPy's is several times lower. This module recomputes
exactly the same step with NumPy views of the network's weights (no copy: they
follow in-place weight updates). ``MANN.step`` remains the reference; tests
check that both agree.

The recurrent state is the same :class:`~sk_mann.model.MANNState`, holding
NumPy arrays instead of tensors.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np
import torch

from . import _jit_step
from .memory import MemoryState
from .model import MANN, MANNState

__all__ = ["NumpyMANN", "PendingStep"]

_EPS = 1e-8  # same guard as sk_mann.memory._EPS
_VERSION = operator.attrgetter("_version")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


class PendingStep(NamedTuple):
    """A one-row step computed by :meth:`NumpyMANN.step_one`, not yet committed.

    Everything the step produced that the next state needs; ``usage`` and the
    least-used mask are derived from it by :meth:`NumpyMANN.commit`.
    """

    h: np.ndarray  # (H,)
    c: np.ndarray  # (H,)
    reads: np.ndarray  # (R * W,)
    memory: np.ndarray  # (N, W), M_t
    read_weights: np.ndarray  # (R, N)
    write_weights: np.ndarray | None  # (R, N); None where usage is given
    hr: np.ndarray | None = None  # (H + R * W,), [h; reads] in one buffer
    base: np.ndarray | None = None  # the step's gate terms without x
    usage: np.ndarray | None = None  # (N,) the usage it leaves, if computed
    least_used: np.ndarray | None = None  # (N,) and its least-used mask


def _softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + exp(x))``, without overflow (the key strengths)."""
    return np.logaddexp(0.0, x).astype(x.dtype, copy=False)


def _sharpen(sim: np.ndarray, strength: np.ndarray) -> None:
    """In place: cosines times their head's key strength, less each row's max
    (``beta * cosine`` is not bounded, so ``exp`` needs the max taken off)."""
    sim *= strength[..., None]
    sim -= sim.max(axis=-1, keepdims=True)


def _committed(pending: PendingStep, usage, least_used) -> MANNState:
    """The batch-1 state a committed one-row step leaves."""
    return MANNState(
        pending.h[None],
        np.ascontiguousarray(pending.c)[None],
        pending.reads[None],
        MemoryState(
            pending.memory[None],
            usage[None],
            pending.read_weights[None],
            least_used[None],
        ),
    )


class NumpyMANN:
    """NumPy views of a CPU :class:`MANN`'s weights and its step function.

    Parameters
    ----------
    module : MANN
        A network on the CPU (float32, or float64). Its weights are viewed, not
        copied.
    """

    def __init__(self, module: MANN) -> None:
        self.m = module
        p = {k: v.detach().numpy() for k, v in module.named_parameters()}
        self.w_in_t = p["input_proj.weight"].T
        self.b_in = p["input_proj.bias"]
        self.w_rec_t = (
            p["recurrent_proj.weight"].T if "recurrent_proj.weight" in p else None
        )
        self.w_head_t = p["head.weight"].T
        self.b_head = p["head.bias"]
        self.w_out_t = p["output.weight"].T
        self.b_out = p["output.bias"]
        # Streaming paths (prepare / step_one / commit, predict_logits with a
        # base): the input projection split into its feature and label rows,
        # the output into its h and read rows, and per-column scales that let
        # one tanh give both tanh and sigmoid, sigmoid(x) = (tanh(x / 2) + 1) / 2
        # (NumPy's tanh is several times faster than scipy's expit here).
        n_x = module.n_inputs
        self.w_x_t = self.w_in_t[:n_x]
        self.w_label_t = self.w_in_t[n_x:]
        H = module.controller_size
        self.w_out_h_t = self.w_out_t[:H]
        self.w_out_r_t = self.w_out_t[H:]
        self.dtype = dt = self.b_out.dtype
        if module.controller == "lstm":  # gates i, f, g, o: tanh only for g
            self.gate_scale = np.full(4 * H, 0.5, dtype=dt)
            self.gate_scale[2 * H : 3 * H] = 1.0
        RW, R = module.n_reads * module.slot_size, module.n_reads
        self.head_scale = np.ones(self.b_head.shape[0], dtype=dt)
        self.head_scale[RW : RW + R] = 0.5  # the write gates are sigmoids
        self._params = list(module.parameters())
        # The compiled single-row kernels read torch's layout (a row per unit).
        self.w_in = p["input_proj.weight"]
        self.w_rec = p.get("recurrent_proj.weight")
        self.w_head = p["head.weight"]
        self.w_out = p["output.weight"]
        # Architecture flags the compiled kernels take, read once.
        self._H = H
        self._n_x = n_x
        self._gamma = self.dtype.type(module.gamma)
        self._lstm = module.controller == "lstm"
        self._add_content = module.write_content == "add"
        self._read_after_write = bool(module.read_after_write)
        #: Key strengths (``MANN(key_strength=True)``): the last ``n_reads``
        #: head outputs; the compiled kernels take them too.
        self._strength = module.key_strength
        #: Use the compiled kernels of :mod:`sk_mann._jit_step`.
        self.jit = _jit_step.AVAILABLE
        #: Threads of the compiled kernels (their two large products).
        self.n_threads = 1
        #: Scratch space of the estimator streaming through this engine.
        self.memo: tuple | None = None
        self.row_memo: tuple = ((), None)
        #: The streaming estimator's label vector and ``label_terms`` per code,
        #: for the scheme ``by_code_of`` and the weights version
        #: ``by_code_version``: a stream has a handful of label codes, so it
        #: reads those weight columns once per code, not once per sample.
        self.by_code: dict = {}
        self.by_code_of = self.by_code_version = None
        #: Whether the last compiled step read the weights backwards.
        self._reverse = False
        #: ``(h, [h; reads])`` of the last committed state (see ``_rec_of``).
        self._last_rec: tuple = (None, None)

    def weights_version(self) -> tuple:
        """Torch's version counters of the weights: they change on in-place updates."""
        return tuple(map(_VERSION, self._params))

    def label_terms(self, label: np.ndarray) -> np.ndarray:
        """``b + W_label y``, the gate terms of a previous label (compiled path)."""
        return _jit_step.label_terms(
            self.w_in, self.b_in, self._n_x, self.label_row(label)
        )

    @staticmethod
    def state_to_numpy(state: MANNState) -> MANNState:
        """Views of a CPU tensor state as NumPy arrays."""
        mem = MemoryState(*(t.numpy() for t in state.memory))
        return MANNState(state.h.numpy(), state.c.numpy(), state.reads.numpy(), mem)

    @staticmethod
    def state_to_torch(state: MANNState) -> MANNState:
        """Tensors sharing memory with a NumPy state."""
        mem = MemoryState(*(torch.from_numpy(a) for a in state.memory))
        return MANNState(
            torch.from_numpy(state.h),
            torch.from_numpy(state.c),
            torch.from_numpy(state.reads),
            mem,
        )

    def _controller_and_heads(
        self, inputs: np.ndarray, state: MANNState, base: np.ndarray | None = None
    ) -> tuple:
        """Controller update and head outputs: (h, c, keys, gate, content, strength).

        With ``base`` (:meth:`prepare` of a batch-1 state), ``inputs`` holds the
        features only and every row shares that state and previous label.
        """
        m = self.m
        n = inputs.shape[0]
        if base is not None:
            gates = inputs @ self.w_x_t
            if self.jit and self._lstm and gates.dtype == np.float32:
                h, c = _jit_step.batch_lstm(gates, base, state.c[0])
                return (h, c, *self._heads(h, fused=True))
            gates += base
            if m.controller == "lstm":  # in place: one pass per op over (n, 4H)
                H = m.controller_size
                gates *= self.gate_scale
                np.tanh(gates, out=gates)
                for part in (gates[:, : 2 * H], gates[:, 3 * H :]):
                    part *= 0.5
                    part += 0.5
                c = gates[:, H : 2 * H] * state.c
                c += gates[:, :H] * gates[:, 2 * H : 3 * H]
                h = np.tanh(c)
                h *= gates[:, 3 * H :]
            else:
                h = np.tanh(gates)
                c = np.broadcast_to(state.c, (n, state.c.shape[1]))
        else:
            h, c = self._controller(inputs, state)
        return (h, c, *self._heads(h))

    def _heads(self, h: np.ndarray, fused: bool = False) -> tuple:
        """Squashed head outputs (keys, gate, content, strength) of ``n`` rows.

        ``strength`` (n, heads) is None for a network without key strengths.

        ``fused``: in one compiled pass (float32 batch predict, as its LSTM
        cells), with the rational ``tanh`` of :func:`_jit_step.batch_heads`.
        """
        m = self.m
        n = h.shape[0]
        R, W = m.n_reads, m.slot_size
        head = h @ self.w_head_t
        if fused:
            add = m.write_content == "add"
            keys, gate, content = _jit_step.batch_heads(head, self.b_head, R, W, add)
            strength = None
            if self._strength:
                strength = _softplus(head[:, -R:] + self.b_head[-R:])
            # numba boxes the same array twice as two objects: keep one, so
            # that the read sees "content is keys" and skips its products.
            return keys, gate, content if add else keys, strength
        head += self.b_head
        keys = np.tanh(head[:, : R * W]).reshape(n, R, W)
        gate = _sigmoid(head[:, R * W : R * W + R])
        if m.write_content == "add":
            content = np.tanh(head[:, R * W + R : 2 * R * W + R]).reshape(n, R, W)
        else:
            content = keys
        strength = _softplus(head[:, -R:]) if self._strength else None
        return keys, gate, content, strength

    def _controller(self, inputs: np.ndarray, state: MANNState) -> tuple:
        """``(h, c)`` from ``inputs = [x ; label]`` rows and a batch-1 or n state."""
        m = self.m
        n = inputs.shape[0]
        gates = inputs @ self.w_in_t + self.b_in
        if self.w_rec_t is not None:
            parts = ([state.h] if m.controller == "lstm" else []) + (
                [state.reads] if m.read_feedback else []
            )
            rec = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            gates += rec @ self.w_rec_t  # (1 or n) rows, broadcast
        if m.controller == "lstm":
            H = m.controller_size
            i, f, o = (_sigmoid(gates[:, k * H : (k + 1) * H]) for k in (0, 1, 3))
            c = f * state.c + i * np.tanh(gates[:, 2 * H : 3 * H])
            h = o * np.tanh(c)
        else:
            h = np.tanh(gates)
            c = np.repeat(state.c, n, axis=0) if state.c.shape[0] != n else state.c
        return h, c

    def step(
        self, inputs: np.ndarray, state: MANNState
    ) -> tuple[np.ndarray, MANNState]:
        """One step for ``n`` rows; a state of batch 1 is broadcast to every row.

        Parameters
        ----------
        inputs : ndarray of shape (n, n_inputs + n_label_inputs), float32
        state : MANNState of NumPy arrays, batch 1 or n

        Returns
        -------
        logits : ndarray of shape (n, n_outputs)
        state : MANNState of batch n
        """
        m = self.m
        n = inputs.shape[0]
        R, W = m.n_reads, m.slot_size
        h, c, keys, gate, content, strength = self._controller_and_heads(inputs, state)
        gate = gate[:, :, None]
        mem = state.memory
        lu = mem.least_used[:, None, :]
        write_w = lu + gate * (mem.read_weights - lu)  # eq. 7, (n, R, N)
        erased = mem.memory.copy()
        rows = np.arange(erased.shape[0])
        erased[rows, np.argmin(mem.usage, axis=1)] = 0.0
        new_memory = erased + np.matmul(write_w.transpose(0, 2, 1), content)
        source = (
            new_memory
            if m.read_after_write
            else np.broadcast_to(mem.memory, new_memory.shape)
        )
        dots = np.matmul(keys, source.transpose(0, 2, 1))
        norms = (
            np.linalg.norm(keys, axis=-1)[:, :, None]
            * np.linalg.norm(source, axis=-1)[:, None, :]
        )
        sim = dots / (norms + _EPS)
        if strength is not None:
            sim *= strength[:, :, None]
        sim = np.exp(sim - sim.max(axis=-1, keepdims=True))
        read_w = sim / sim.sum(axis=-1, keepdims=True)
        reads = np.matmul(read_w, source).reshape(n, R * W)
        usage = m.gamma * mem.usage + (read_w + write_w).sum(axis=1)
        order = np.argsort(usage, axis=1, kind="stable")[:, :R]
        least_used = np.zeros(usage.shape, usage.dtype)
        least_used[np.arange(n)[:, None], order] = 1.0
        logits = np.concatenate([h, reads], axis=1) @ self.w_out_t + self.b_out
        dt = self.b_out.dtype  # the network's dtype (float32, or float64 in tests)
        new_state = MANNState(
            h.astype(dt, copy=False),
            np.ascontiguousarray(c, dtype=dt),
            reads.astype(dt, copy=False),
            MemoryState(
                new_memory.astype(dt, copy=False),
                usage.astype(dt, copy=False),
                read_w.astype(dt, copy=False),
                least_used.astype(dt, copy=False),
            ),
        )
        return logits, new_state

    def predict_logits(
        self, inputs: np.ndarray, state: MANNState, base: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits of one step for ``n`` rows that all start from one state of batch 1.

        Same result as :meth:`step` (up to rounding), without building each row's
        memory after its write: with ``M'`` the erased shared memory and
        ``M_row = M' + Ww^T C``, the cosine numerators, the norms of the written
        rows and the read vectors expand into products with ``M'`` shared by all
        rows plus ``heads x heads`` corrections per row. Only the logits are
        returned (predictions throw the state away).

        ``inputs`` holds ``[x ; label]`` rows, or, given ``base`` (:meth:`prepare`
        of ``state`` and the previous label), the features ``x`` only.
        """
        m = self.m
        n = inputs.shape[0]
        R, W = m.n_reads, m.slot_size
        h, _, keys, gate, content, strength = self._controller_and_heads(
            inputs, state, base
        )
        mem = state.memory
        lu = mem.least_used[0]
        if self.jit and m.read_after_write:
            return self._predict_logits_jit(h, keys, gate, content, strength, mem)
        write_w = gate[:, :, None] * (mem.read_weights[0] - lu)
        write_w += lu  # (n, R, N)
        key_norm = np.sqrt(np.einsum("nrw,nrw->nr", keys, keys))  # (n, R)
        if m.read_after_write:
            shared, A, P, KC, CC = self._shared_products(keys, content, mem)
            dots = np.matmul(KC, write_w)
            dots += A
            cross = np.matmul(CC, write_w)
            cross += 2.0 * P
            cross *= write_w
            norm2 = cross.sum(axis=1)
            norm2 += np.einsum("ij,ij->i", shared, shared)
            mem_norm = np.sqrt(np.maximum(norm2, 0.0, out=norm2), out=norm2)  # (n, N)
        else:
            shared = mem.memory[0]  # reads use M_{t-1}
            dots = (keys.reshape(n * R, W) @ shared.T).reshape(n, R, -1)
            mem_norm = np.sqrt(np.einsum("ij,ij->i", shared, shared))[None, :]
        norms = key_norm[:, :, None] * mem_norm[:, None, :]
        norms += _EPS
        sim = dots
        sim /= norms
        if strength is not None:
            _sharpen(sim, strength)
        np.exp(sim, out=sim)  # else cosines lie in [-1, 1]: no max to subtract
        sim /= sim.sum(axis=-1, keepdims=True)
        read_w = sim
        reads = (read_w.reshape(n * R, -1) @ shared).reshape(n, R, W)
        if m.read_after_write:  # + (w^r Ww^T) C
            reads += np.matmul(np.matmul(read_w, write_w.transpose(0, 2, 1)), content)
        return self._logits(h, reads)

    def _logits(self, h: np.ndarray, reads: np.ndarray) -> np.ndarray:
        """Output layer of ``n`` rows: ``h`` (n, H) and ``reads`` (n, R, W)."""
        logits = h @ self.w_out_h_t
        logits += reads.reshape(h.shape[0], -1) @ self.w_out_r_t
        logits += self.b_out
        return logits

    @staticmethod
    def _shared_products(keys, content, mem) -> tuple:
        """Products of ``n`` rows' heads with the memory they all write into.

        Returns ``(M', A, P, KC, CC)``: ``M'`` the memory with its least-used
        slot erased, ``A = k . M'_i`` and ``P = c . M'_i`` (n, R, N),
        ``KC = k . c`` and ``CC = c . c`` (n, R, R); ``P`` is ``A`` and ``CC``
        is ``KC`` when the content is the key.
        """
        n, R, W = keys.shape
        shared = mem.memory[0].copy()
        shared[np.argmin(mem.usage[0])] = 0.0  # M', shared by all rows
        A = (keys.reshape(n * R, W) @ shared.T).reshape(n, R, -1)
        KC = np.matmul(keys, content.transpose(0, 2, 1))
        if content is keys:
            return shared, A, A, KC, KC
        P = (content.reshape(n * R, W) @ shared.T).reshape(n, R, -1)
        return shared, A, P, KC, np.matmul(content, content.transpose(0, 2, 1))

    def _predict_logits_jit(self, h, keys, gate, content, strength, mem) -> np.ndarray:
        """:meth:`predict_logits` (read after write) with the compiled read.

        The products with the shared memory stay matrix products (BLAS); the
        ~15 passes over ``(rows, heads, slots)`` arrays between them are one
        compiled pass per row (:func:`sk_mann._jit_step.batch_read_weights`).
        """
        n, R, W = keys.shape
        shared, A, P, KC, CC = self._shared_products(keys, content, mem)
        read_w, SW = _jit_step.batch_read_weights(
            A,
            P,
            KC,
            CC,
            keys,
            np.ascontiguousarray(gate),
            mem.read_weights[0],
            mem.least_used[0],
            np.einsum("ij,ij->i", shared, shared),
            np.empty((0, R), keys.dtype) if strength is None else strength,
        )
        reads = (read_w.reshape(n * R, -1) @ shared).reshape(n, R, W)
        reads += np.matmul(SW, content)  # the rows' own writes
        return self._logits(h, reads)

    # ------------------------------------------------ single-row streaming path
    def prepare(
        self, state: MANNState, label: np.ndarray, terms: np.ndarray | None = None
    ) -> np.ndarray:
        """Gate pre-activations of the next step that do not depend on its input.

        ``b + W_label y_{t-1} + W_rec [h_{t-1}; r_{t-1}]``: known as soon as a
        sample is committed, so a stream computes it once per sample, and the
        next :meth:`step_one` only adds ``W_x x_t``.

        Parameters
        ----------
        state : MANNState of NumPy arrays, batch 1
        label : ndarray of shape (1, n_label_inputs) or (n_label_inputs,)
        terms : ndarray, optional
            :meth:`label_terms` of ``label``, if already known.
        """
        if self.jit:  # the same sums as the compiled step's
            if terms is None:
                terms = self.label_terms(label)
            rec, w_rec = self._rec_of(state)
            threads = _jit_step.safe_threads(self.n_threads)
            return _jit_step.prepare(terms, w_rec, rec, self._H, threads)
        base = self.b_in + np.ravel(label) @ self.w_label_t
        if self.w_rec_t is not None:
            base += self._rec_input(state.h[0], state.reads[0]) @ self.w_rec_t
        return base

    def step_one(
        self,
        x: np.ndarray,
        state: MANNState,
        label: np.ndarray,
        base: np.ndarray | None = None,
        terms: np.ndarray | None = None,
    ) -> tuple[np.ndarray, PendingStep]:
        """One step for one row, from a batch-1 state and the previous label.

        The same step as :meth:`step` (which stays the reference), written for a
        single row with as few calls as possible: at this size each call's
        fixed cost, not arithmetic, is the price.

        Parameters
        ----------
        x : ndarray of shape (n_inputs,)
            Features of this step, in the network's dtype.
        state : MANNState of NumPy arrays, batch 1
        label : ndarray of shape (n_label_inputs,) or (1, n_label_inputs)
            The previous label's vector.
        base : ndarray, optional
            :meth:`prepare` of ``state`` and ``label``, if already known (a
            step computes it otherwise, and returns it as ``pending.base``).
        terms : ndarray, optional
            :meth:`label_terms` of ``label``, if already known (compiled path).

        Returns
        -------
        logits : ndarray of shape (n_outputs,)
        pending : PendingStep
            Pass to :meth:`commit` to learn the sample; drop it to only predict.
        """
        m = self.m
        if self.jit:
            # Alternate steps read the weights backwards (see _jit_step._units).
            self._reverse = not self._reverse
            mem = state.memory
            have_base = base is not None
            if not have_base:
                base = np.empty(self.b_in.shape[0], self.dtype)
                if terms is None:
                    terms = self.label_terms(label)
            rec, w_rec = self._rec_of(state)
            logits, hr, c, memory, read_w, usage, least_used = _jit_step.step(
                x,
                base,
                have_base,
                terms if terms is not None else self.b_in,  # unread given base
                rec,
                state.c[0],
                mem.usage[0],
                self._gamma,
                m.n_reads,
                self._lstm,
                _jit_step.safe_threads(self.n_threads),
                self._reverse,
                self.w_in,
                w_rec,
                self.w_head,
                self.b_head,
                mem.memory[0],
                mem.read_weights[0],
                mem.least_used[0],
                self.w_out,
                self.b_out,
                self._add_content,
                self._read_after_write,
                self._strength,
            )
            H = self._H
            step = PendingStep(
                hr[:H], c, hr[H:], memory, read_w, None, hr, base, usage, least_used
            )
            return logits, step
        if base is None:
            base = self.prepare(state, label)
        R, W, H = m.n_reads, m.slot_size, m.controller_size
        gates = x @ self.w_x_t
        gates += base
        if m.controller == "lstm":
            t = np.tanh(gates * self.gate_scale)
            s = t * 0.5
            s += 0.5  # sigmoid of i, f, o; t holds tanh(g)
            c = s[H : 2 * H] * state.c[0]
            c += s[:H] * t[2 * H : 3 * H]
            h = s[3 * H :] * np.tanh(c)
        else:
            h = np.tanh(gates)
            c = state.c[0]
        head = h @ self.w_head_t
        head += self.b_head
        th = np.tanh(head * self.head_scale)
        keys = th[: R * W].reshape(R, W)
        gate = th[R * W : R * W + R, None] * 0.5 + 0.5
        if m.write_content == "add":
            content = th[R * W + R : 2 * R * W + R].reshape(R, W)
        else:
            content = keys
        mem = state.memory
        lu = mem.least_used[0]
        write_w = mem.read_weights[0] - lu
        write_w *= gate
        write_w += lu  # eq. 7, (R, N)
        memory = mem.memory[0].copy()
        memory[mem.usage[0].argmin()] = 0.0
        memory += write_w.T @ content
        source = memory if m.read_after_write else mem.memory[0]
        sim = keys @ source.T  # (R, N)
        norms = np.sqrt(np.einsum("ij,ij->i", keys, keys))[:, None] * np.sqrt(
            np.einsum("ij,ij->i", source, source)
        )
        norms += _EPS
        sim /= norms
        if self._strength:
            _sharpen(sim, _softplus(head[-R:]))
        np.exp(sim, out=sim)  # else cosines lie in [-1, 1]: no max to subtract
        sim /= sim.sum(axis=1, keepdims=True)
        reads = (sim @ source).ravel()
        logits = h @ self.w_out_h_t
        logits += reads @ self.w_out_r_t
        logits += self.b_out
        return logits, PendingStep(h, c, reads, memory, sim, write_w, None, base)

    def commit(self, pending: PendingStep, state: MANNState) -> MANNState:
        """The state after a :meth:`step_one` of ``state`` (batch 1)."""
        if pending.usage is not None:  # the compiled step computed it
            new = _committed(pending, pending.usage, pending.least_used)
            self._last_rec = (new.h, pending.hr)
            return new
        m = self.m
        usage = pending.read_weights.sum(axis=0)
        usage += pending.write_weights.sum(axis=0)
        usage += m.gamma * state.memory.usage[0]
        least_used = np.zeros(usage.shape, usage.dtype)
        least_used[np.argsort(usage, kind="stable")[: m.n_reads]] = 1.0
        return _committed(pending, usage, least_used)

    def _rec_of(self, state: MANNState) -> tuple:
        """``(rec, w_rec)`` of a batch-1 state for the compiled kernels.

        ``rec`` is ``[h; reads]`` as the recurrent projection reads it (empty,
        with ``w_rec`` any weight matrix, when the network has none). The
        buffer a commit left is reused for the state it built.
        """
        if self.w_rec is None:
            return self.b_in[:0], self.w_in
        last_h, hr = self._last_rec
        if state.h is last_h and self._lstm and self.m.read_feedback:
            return hr, self.w_rec
        return self._rec_input(state.h[0], state.reads[0]), self.w_rec

    def label_row(self, label: np.ndarray) -> np.ndarray:
        """A label vector as the kernels read it: 1-D, in the network's dtype."""
        if label.ndim != 1:  # (1, width): the row view
            label = label.reshape(-1)
        if label.dtype != self.dtype:
            label = label.astype(self.dtype)
        return label

    def _rec_input(self, h: np.ndarray, reads: np.ndarray) -> np.ndarray:
        """``[h; reads]`` of one row as the recurrent projection reads it."""
        m = self.m
        parts = ([h] if self._lstm else []) + ([reads] if m.read_feedback else [])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
