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

import numpy as np
import torch

from .memory import MemoryState
from .model import MANN, MANNState

__all__ = ["NumpyMANN"]

_EPS = 1e-8  # same guard as sk_mann.memory._EPS


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


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

    def _controller_and_heads(self, inputs: np.ndarray, state: MANNState) -> tuple:
        """Controller update and squashed head outputs (h, c, keys, gate, content)."""
        m = self.m
        n = inputs.shape[0]
        R, W = m.n_reads, m.slot_size
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
            c = np.broadcast_to(state.c, (n, state.c.shape[1]))
        head = h @ self.w_head_t + self.b_head
        keys = np.tanh(head[:, : R * W]).reshape(n, R, W)
        gate = _sigmoid(head[:, R * W : R * W + R])
        if m.write_content == "add":
            content = np.tanh(head[:, R * W + R :]).reshape(n, R, W)
        else:
            content = keys
        return h, c, keys, gate, content

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
        h, c, keys, gate, content = self._controller_and_heads(inputs, state)
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
        sim = np.exp(sim - sim.max(axis=-1, keepdims=True))
        read_w = sim / sim.sum(axis=-1, keepdims=True)
        reads = np.matmul(read_w, source).reshape(n, R * W)
        usage = m.gamma * mem.usage + (read_w + write_w).sum(axis=1)
        order = np.argsort(usage, axis=1, kind="stable")[:, :R]
        least_used = np.zeros_like(usage)
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

    def predict_logits(self, inputs: np.ndarray, state: MANNState) -> np.ndarray:
        """Logits of one step for ``n`` rows that all start from one state of batch 1.

        Same result as :meth:`step` (up to rounding), without building each row's
        memory after its write: with ``M'`` the erased shared memory and
        ``M_row = M' + Ww^T C``, the cosine numerators, the norms of the written
        rows and the read vectors expand into products with ``M'`` shared by all
        rows plus ``heads x heads`` corrections per row. Only the logits are
        returned (predictions throw the state away).
        """
        m = self.m
        n = inputs.shape[0]
        R, W = m.n_reads, m.slot_size
        h, _, keys, gate, content = self._controller_and_heads(inputs, state)
        gate = gate[:, :, None]
        mem = state.memory
        lu = mem.least_used[0]
        write_w = lu + gate * (mem.read_weights[0] - lu)  # (n, R, N)
        key_norm = np.linalg.norm(keys, axis=-1)  # (n, R)
        if m.read_after_write:
            base = mem.memory[0].copy()
            base[np.argmin(mem.usage[0])] = 0.0  # M', shared
            A = (keys.reshape(n * R, W) @ base.T).reshape(n, R, -1)  # k . M'_i
            KC = np.matmul(keys, content.transpose(0, 2, 1))  # (n, R, R)
            dots = A + np.matmul(KC, write_w)
            P = (
                A
                if content is keys
                else (content.reshape(n * R, W) @ base.T).reshape(n, R, -1)
            )
            CC = (
                KC
                if content is keys
                else np.matmul(content, content.transpose(0, 2, 1))
            )
            norm2 = (base * base).sum(axis=1) + (
                write_w * (2.0 * P + np.matmul(CC, write_w))
            ).sum(axis=1)
            mem_norm = np.sqrt(np.maximum(norm2, 0.0))  # (n, N)
        else:
            base = mem.memory[0]  # reads use M_{t-1}
            dots = (keys.reshape(n * R, W) @ base.T).reshape(n, R, -1)
            mem_norm = np.broadcast_to(np.linalg.norm(base, axis=1), (n, base.shape[0]))
        sim = dots / (key_norm[:, :, None] * mem_norm[:, None, :] + _EPS)
        sim = np.exp(sim - sim.max(axis=-1, keepdims=True))
        read_w = sim / sim.sum(axis=-1, keepdims=True)
        reads = (read_w.reshape(n * R, -1) @ base).reshape(n, R, W)
        if m.read_after_write:  # + (w^r Ww^T) C
            reads += np.matmul(np.matmul(read_w, write_w.transpose(0, 2, 1)), content)
        return (
            np.concatenate([h, reads.reshape(n, R * W)], axis=1) @ self.w_out_t
            + self.b_out
        )
