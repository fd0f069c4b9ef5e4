"""Networks: the MANN (LSTM or feed-forward controller) and the paper's baselines.

Every network has one interface (every tensor of a state has the batch as its
first dimension):

- ``initial_state(batch)`` -- the recurrent state at the start of an episode;
- ``step(inputs, state) -> (logits, state)`` -- one time step for streaming use,
  ``inputs`` of shape ``(batch, n_inputs + n_label_inputs)`` = ``[x_t ; y_{t-1}]``;
- ``forward(x, label_in) -> logits`` -- whole episodes for training,
  ``x`` of shape ``(batch, T, n_inputs)``, ``label_in`` of shape
  ``(batch, T, n_label_inputs)``, logits of shape ``(batch, T, n_outputs)``.

``step`` and ``forward`` run the same code (``forward`` only precomputes the
input projection of all steps at once), so they agree exactly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import _memory_op
from . import memory as mem

__all__ = [
    "MANN",
    "PAPER_MANN_KWARGS",
    "FeedForwardBaseline",
    "LSTMBaseline",
    "MANNState",
    "build_network",
]

#: The paper's MANN (Santoro et al. 2016) and the defaults chosen where it is
#: ambiguous: ``MANN(n_inputs, n_label_inputs, n_outputs, **PAPER_MANN_KWARGS)``.
PAPER_MANN_KWARGS = {
    "controller": "lstm",
    "controller_size": 200,
    "n_slots": 128,
    "slot_size": 40,
    "n_reads": 4,
    "gamma": 0.95,
    "read_feedback": True,
    "write_content": "key",
    "read_after_write": True,
}


class MANNState(NamedTuple):
    """Recurrent state of a :class:`MANN` between two steps.

    Attributes
    ----------
    h, c : Tensor of shape (batch, controller_size)
        Controller hidden and cell state (``c`` unused by a feed-forward controller).
    reads : Tensor of shape (batch, n_reads * slot_size)
        ``r_{t-1}``, the previous read vectors, flattened.
    memory : MemoryState
        The LRUA memory.
    """

    h: Tensor
    c: Tensor
    reads: Tensor
    memory: mem.MemoryState


class MANN(nn.Module):
    """Memory-Augmented Neural Network with LRUA memory (Santoro et al. 2016).

    Parameters
    ----------
    n_inputs : int
        Size of ``x_t``.
    n_label_inputs : int
        Size of the encoded previous label ``y_{t-1}``.
    n_outputs : int
        Number of logits.
    controller : {"lstm", "ff"}, default="lstm"
        LSTM controller (the paper's main model) or a one-layer feed-forward
        (tanh) controller.
    controller_size : int, default=200
    n_slots : int, default=128
    slot_size : int, default=40
    n_reads : int, default=4
        Read heads; each also writes, and ``n_reads`` is the ``n`` of eq. 6.
    gamma : float, default=0.95
        Usage decay (eq. 5).
    read_feedback : bool, default=True
        Feed ``r_{t-1}`` into the controller at step ``t`` (main text of the
        paper; the supplement's LSTM equation has no such term).
    write_content : {"key", "add"}, default="key"
        Write the read key (eq. 8 of the paper) or a separate add vector.
    read_after_write : bool, default=True
        Step ``t`` reads ``M_t`` (after its own write) or ``M_{t-1}``.
    key_strength : bool, default=False
        An extension, not in the paper: each head also emits a key strength
        ``beta = softplus(.)`` that multiplies its cosine similarities before
        the read softmax (as the Neural Turing Machine's content addressing),
        so a read can focus on one slot; its bias starts at ``beta = 1``, the
        paper's read.
    """

    #: Networks pickled before the option existed have none.
    key_strength = False

    def __init__(
        self,
        n_inputs: int,
        n_label_inputs: int,
        n_outputs: int,
        *,
        controller: str = "lstm",
        controller_size: int = 200,
        n_slots: int = 128,
        slot_size: int = 40,
        n_reads: int = 4,
        gamma: float = 0.95,
        read_feedback: bool = True,
        write_content: str = "key",
        read_after_write: bool = True,
        key_strength: bool = False,
    ) -> None:
        super().__init__()
        if controller not in ("lstm", "ff"):
            raise ValueError(f"controller={controller!r}: use 'lstm' or 'ff'.")
        if write_content not in ("key", "add"):
            raise ValueError(f"write_content={write_content!r}: use 'key' or 'add'.")
        self.n_inputs, self.n_label_inputs = n_inputs, n_label_inputs
        self.controller = controller
        self.controller_size = controller_size
        self.n_slots = n_slots
        self.slot_size = slot_size
        self.n_reads = n_reads
        self.gamma = gamma
        self.read_feedback = read_feedback
        self.write_content = write_content
        self.read_after_write = read_after_write
        self.key_strength = bool(key_strength)

        n_gates = 4 if controller == "lstm" else 1
        read_size = n_reads * slot_size
        self.input_proj = nn.Linear(
            n_inputs + n_label_inputs, n_gates * controller_size
        )
        rec_in = (controller_size if controller == "lstm" else 0) + (
            read_size if read_feedback else 0
        )
        self.recurrent_proj = (
            nn.Linear(rec_in, n_gates * controller_size, bias=False) if rec_in else None
        )
        n_head = n_reads * slot_size + n_reads
        if write_content == "add":
            n_head += n_reads * slot_size
        if self.key_strength:  # the last n_reads outputs
            n_head += n_reads
        self.head = nn.Linear(controller_size, n_head)
        if self.key_strength:  # softplus(log(e - 1)) = 1: the paper's read at first
            with torch.no_grad():
                self.head.bias[-n_reads:].fill_(math.log(math.e - 1.0))
        self.output = nn.Linear(controller_size + read_size, n_outputs)
        if controller == "lstm":  # forget-gate bias 1, a common LSTM initialisation
            with torch.no_grad():
                self.input_proj.bias[controller_size : 2 * controller_size].fill_(1.0)

    def initial_state(self, batch: int) -> MANNState:
        """Return the state at the start of an episode (memory wiped)."""
        p = self.output.weight
        z = torch.zeros(batch, self.controller_size, dtype=p.dtype, device=p.device)
        reads = torch.zeros(
            batch, self.n_reads * self.slot_size, dtype=p.dtype, device=p.device
        )
        memory = mem.initial_state(
            batch,
            self.n_slots,
            self.slot_size,
            self.n_reads,
            dtype=p.dtype,
            device=p.device,
        )
        return MANNState(z, z, reads, memory)

    def _controller(self, proj: Tensor, state: MANNState) -> tuple[Tensor, Tensor]:
        """Controller update from the projected input ``proj`` of this step."""
        parts = []
        if self.controller == "lstm":
            parts.append(state.h)
        if self.read_feedback:
            parts.append(state.reads)
        gates = proj
        if self.recurrent_proj is not None:
            rec = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
            gates = torch.addmm(proj, rec, self.recurrent_proj.weight.t())
        if self.controller == "ff":
            h = torch.tanh(gates)
            return h, state.c
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def _core(
        self, proj: Tensor, state: MANNState, kernel: bool = False
    ) -> tuple[Tensor, MANNState]:
        """One step after the input projection: returns ``o_t = [h_t ; r_t]``.

        ``kernel``: the memory step by :mod:`sk_mann._memory_op` (the state's
        memory then transposed, ``(batch, width, slots)``).
        """
        h, c = self._controller(proj, state)
        batch = h.shape[0]
        r, w = self.n_reads, self.slot_size
        head = self.head(h)
        # Squash raw head outputs here, once: keys in (-1, 1), gates in (0, 1).
        keys = torch.tanh(head[:, : r * w]).view(batch, r, w)
        gate = torch.sigmoid(head[:, r * w : r * w + r])
        if self.write_content == "add":
            content = torch.tanh(head[:, r * w + r : 2 * r * w + r]).view(batch, r, w)
        else:
            content = keys
        strength = (
            torch.nn.functional.softplus(head[:, -r:]) if self.key_strength else None
        )
        memory_step = _memory_op.lrua_memory_step if kernel else mem.lrua_step_fused
        reads, memory = memory_step(
            state.memory,
            keys,
            gate,
            content,
            gamma=self.gamma,
            read_after_write=self.read_after_write,
            strength=strength,
        )
        reads = reads.reshape(batch, r * w)
        return torch.cat([h, reads], dim=-1), MANNState(h, c, reads, memory)

    def step(self, inputs: Tensor, state: MANNState) -> tuple[Tensor, MANNState]:
        """One time step: ``inputs = [x_t ; y_{t-1}]`` -> ``(logits_t, state_t)``."""
        o, state = self._core(self.input_proj(inputs), state)
        return self.output(o), state

    def forward(self, x: Tensor, label_in: Tensor) -> Tensor:
        """Run episodes from a wiped memory; logits ``(batch, T, n_outputs)``."""
        proj = self.input_proj(torch.cat([x, label_in], dim=-1))
        state = self.initial_state(x.shape[0])
        # The memory step's kernels pay in eager mode; compiled, inductor's
        # fused loops do better than a call out of the graph (speed notes).
        kernel = (
            _memory_op.ENABLED
            and not torch.compiler.is_compiling()
            and _memory_op.usable(proj)
        )
        if kernel:  # the kernel keeps the memory transposed
            m = state.memory
            mem_t = m.memory.transpose(1, 2).contiguous()
            state = state._replace(memory=m._replace(memory=mem_t))
        outs = []
        # unbind (not proj[:, t]): indexing would make autograd allocate a
        # zero tensor of the full projection for every step in backward.
        for proj_t in proj.unbind(1):
            o, state = self._core(proj_t, state, kernel)
            outs.append(o)
        return self.output(torch.stack(outs, dim=1))


class LSTMBaseline(nn.Module):
    """The paper's LSTM baseline: an LSTM on ``[x_t ; y_{t-1}]`` and a linear output.

    Parameters
    ----------
    n_inputs, n_label_inputs, n_outputs : int
        As for :class:`MANN`.
    hidden_size : int, default=200
    """

    def __init__(
        self,
        n_inputs: int,
        n_label_inputs: int,
        n_outputs: int,
        *,
        hidden_size: int = 200,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(n_inputs + n_label_inputs, hidden_size, batch_first=True)
        self.output = nn.Linear(hidden_size, n_outputs)

    def initial_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """Return zero ``(h, c)``, each of shape (batch, hidden_size)."""
        p = self.output.weight
        z = torch.zeros(batch, self.hidden_size, dtype=p.dtype, device=p.device)
        return z, z

    def step(
        self, inputs: Tensor, state: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One time step: ``inputs = [x_t ; y_{t-1}]`` -> ``(logits_t, state_t)``."""
        h, c = state
        out, (h, c) = self.lstm(inputs.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        return self.output(out[:, 0]), (h[0], c[0])

    def forward(self, x: Tensor, label_in: Tensor) -> Tensor:
        """Run whole episodes; returns logits ``(batch, T, n_outputs)``."""
        out, _ = self.lstm(torch.cat([x, label_in], dim=-1))
        return self.output(out)


class FeedForwardBaseline(nn.Module):
    """The paper's feed-forward baseline: no memory of earlier steps at all.

    Parameters
    ----------
    n_inputs, n_label_inputs, n_outputs : int
        As for :class:`MANN`.
    hidden_size : int, default=200
    """

    def __init__(
        self,
        n_inputs: int,
        n_label_inputs: int,
        n_outputs: int,
        *,
        hidden_size: int = 200,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.net = nn.Sequential(
            nn.Linear(n_inputs + n_label_inputs, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, n_outputs),
        )

    def initial_state(self, batch: int) -> tuple[()]:
        """The network is stateless: an empty tuple."""
        return ()

    def step(self, inputs: Tensor, state: tuple[()]) -> tuple[Tensor, tuple[()]]:
        """One time step: ``inputs = [x_t ; y_{t-1}]`` -> ``(logits_t, state)``."""
        return self.net(inputs), state

    def forward(self, x: Tensor, label_in: Tensor) -> Tensor:
        """Run whole episodes; returns logits ``(batch, T, n_outputs)``."""
        return self.net(torch.cat([x, label_in], dim=-1))


_NETWORKS = {"mann": MANN, "lstm": LSTMBaseline, "ff": FeedForwardBaseline}


def build_network(
    kind: str, n_inputs: int, n_label_inputs: int, n_outputs: int, **kwargs: object
) -> nn.Module:
    """Build a network by name: ``"mann"``, ``"lstm"`` or ``"ff"``."""
    if kind not in _NETWORKS:
        raise ValueError(
            f"network={kind!r} is unknown; use one of {sorted(_NETWORKS)}."
        )
    return _NETWORKS[kind](n_inputs, n_label_inputs, n_outputs, **kwargs)  # type: ignore[arg-type]
