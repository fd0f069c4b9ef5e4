"""Least-Recently-Used-Access (LRUA) memory as pure functions.

Each function implements one equation of Santoro et al. (2016), section 3.2
("Least Recently Used Access"). They take tensors and return tensors; the
recurrent state is an explicit :class:`MemoryState` value that is passed in and
returned, never stored on an object. Shapes use these names:

``batch``
    number of independent episodes processed together,
``heads``
    number of read heads (``n_reads``; each head also writes),
``slots``
    number of memory rows (``n_slots``),
``width``
    size of a memory row (``slot_size``).

Raw controller outputs are squashed in :mod:`sk_mann.model`; the functions here
assume valid ranges (``gate`` in ``[0, 1]``).

References
----------
Santoro, A., Bartunov, S., Botvinick, M., Wierstra, D., Lillicrap, T. (2016).
One-shot Learning with Memory-Augmented Neural Networks. arXiv:1605.06065.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MemoryState",
    "cosine_similarity",
    "erase_least_used",
    "initial_state",
    "least_used_weights",
    "least_used_weights_argmin",
    "lrua_step",
    "lrua_step_fused",
    "read",
    "read_weights",
    "update_usage",
    "write",
    "write_weights",
]

#: Guard added to norms in the cosine similarity (eq. 2).
_EPS = 1e-8
#: Value every memory cell starts with, so cosine norms are non-zero.
MEMORY_INIT = 1e-6


class MemoryState(NamedTuple):
    """Recurrent state of the LRUA memory between two steps.

    Attributes
    ----------
    memory : Tensor of shape (batch, slots, width)
        ``M_{t-1}``.
    usage : Tensor of shape (batch, slots)
        ``w^u_{t-1}``.
    read_weights : Tensor of shape (batch, heads, slots)
        ``w^r_{t-1}``.
    least_used : Tensor of shape (batch, slots)
        ``w^lu_{t-1}``, a 0/1 mask with ``heads`` ones.
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    least_used: Tensor


def initial_state(
    batch: int,
    n_slots: int,
    slot_size: int,
    n_reads: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> MemoryState:
    """Return the state at the start of an episode.

    Memory cells are ``MEMORY_INIT``, usage and read weights are zero, and the
    least-used mask selects the first ``n_reads`` slots (all usages tie at 0).
    """
    memory = torch.full(
        (batch, n_slots, slot_size), MEMORY_INIT, dtype=dtype, device=device
    )
    usage = torch.zeros(batch, n_slots, dtype=dtype, device=device)
    read_w = torch.zeros(batch, n_reads, n_slots, dtype=dtype, device=device)
    return MemoryState(memory, usage, read_w, least_used_weights(usage, n_reads))


def cosine_similarity(keys: Tensor, memory: Tensor) -> Tensor:
    """Cosine similarity between each key and each memory row (eq. 2).

    ``K(k, M(i)) = k . M(i) / (||k|| ||M(i)|| + eps)``

    Parameters
    ----------
    keys : Tensor of shape (batch, heads, width)
    memory : Tensor of shape (batch, slots, width)

    Returns
    -------
    Tensor of shape (batch, heads, slots)
    """
    dots = torch.bmm(keys, memory.transpose(1, 2))
    norms = keys.norm(dim=-1).unsqueeze(-1) * memory.norm(dim=-1).unsqueeze(1)
    return dots / (norms + _EPS)


def read_weights(similarity: Tensor, strength: Tensor | None = None) -> Tensor:
    """Read weights: softmax of the similarity over slots (eq. 3).

    ``w^r_t(i) = exp K(k_t, M_t(i)) / sum_j exp K(k_t, M_t(j))`` -- no key
    strength, no sharpening (the paper). With ``strength`` (an extension, the
    key strength ``beta`` of the Neural Turing Machine) the similarity is
    multiplied by ``beta`` first: ``softmax_i(beta K(k_t, M_t(i)))``.

    Parameters
    ----------
    similarity : Tensor of shape (batch, heads, slots)
    strength : Tensor of shape (batch, heads), optional
        Key strength ``beta >= 0`` of each head; None: the paper's ``beta = 1``.

    Returns
    -------
    Tensor of shape (batch, heads, slots)
    """
    if strength is not None:
        similarity = similarity * strength.unsqueeze(-1)
    return torch.softmax(similarity, dim=-1)


def read(weights: Tensor, memory: Tensor) -> Tensor:
    """Read vectors ``r_t = sum_i w^r_t(i) M_t(i)`` (eq. 4).

    Parameters
    ----------
    weights : Tensor of shape (batch, heads, slots)
    memory : Tensor of shape (batch, slots, width)

    Returns
    -------
    Tensor of shape (batch, heads, width)
    """
    return torch.bmm(weights, memory)


def update_usage(
    usage: Tensor, read_w: Tensor, write_w: Tensor, gamma: float
) -> Tensor:
    """Usage ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t`` summed over heads (eq. 5).

    Parameters
    ----------
    usage : Tensor of shape (batch, slots)
    read_w, write_w : Tensor of shape (batch, heads, slots)
    gamma : float
        Decay of the usage.

    Returns
    -------
    Tensor of shape (batch, slots)
    """
    return gamma * usage + read_w.sum(dim=1) + write_w.sum(dim=1)


def least_used_weights(usage: Tensor, n: int) -> Tensor:
    """0/1 mask of the ``n`` least-used slots (eq. 6).

    ``w^lu_t(i) = 1 if w^u_t(i) <= m(w^u_t, n) else 0`` where ``m(v, n)`` is the
    n-th smallest element of ``v``. Exactly ``n`` ones per row: ties are broken
    towards the lowest slot index. Not differentiable (a constant mask).

    Parameters
    ----------
    usage : Tensor of shape (batch, slots)
    n : int
        Number of slots to select (the paper uses the number of reads).

    Returns
    -------
    Tensor of shape (batch, slots)
    """
    order = torch.sort(usage.detach(), dim=-1, stable=True).indices[:, :n]
    mask = torch.zeros_like(usage)
    return mask.scatter_(1, order, 1.0)


def least_used_weights_argmin(usage: Tensor, n: int) -> Tensor:
    """:func:`least_used_weights` from ``n`` successive argmins: no sort.

    Each round marks the least-used slot not yet marked (``argmin`` returns
    the lowest index among equal values, the stable sort's order). Under
    ``torch.compile`` the rounds fuse with their neighbours into a few
    reductions over the slots, where a sort stays a separate library call
    (5 ms of a 65 ms training step at batch 16) and ranks from comparing
    every pair of slots cost ``slots`` times more work. In eager mode the sort
    is faster; :func:`lrua_step_fused` picks by mode.

    Parameters
    ----------
    usage : Tensor of shape (batch, slots)
    n : int

    Returns
    -------
    Tensor of shape (batch, slots)
        Exactly :func:`least_used_weights` (tested, ties included).
    """
    u = usage.detach()
    mask = torch.zeros_like(u)
    for _ in range(n):
        free = u.masked_fill(mask > 0, float("inf"))
        mask = mask.scatter(-1, torch.argmin(free, dim=-1, keepdim=True), 1.0)
    return mask


def write_weights(gate: Tensor, prev_read_w: Tensor, prev_least_used: Tensor) -> Tensor:
    """Write weights ``w^w_t = a w^r_{t-1} + (1 - a) w^lu_{t-1}`` (eq. 7).

    Both terms come from step ``t-1``.

    Parameters
    ----------
    gate : Tensor of shape (batch, heads)
        ``sigmoid(alpha)``, already squashed to ``[0, 1]``.
    prev_read_w : Tensor of shape (batch, heads, slots)
    prev_least_used : Tensor of shape (batch, slots)

    Returns
    -------
    Tensor of shape (batch, heads, slots)
    """
    g = gate.unsqueeze(-1)
    return g * prev_read_w + (1.0 - g) * prev_least_used.unsqueeze(1)


def erase_least_used(memory: Tensor, prev_usage: Tensor) -> Tensor:
    """Zero the single least-used slot, computed from ``w^u_{t-1}``.

    "Prior to writing to memory, the least used memory location is computed
    from ``w^u_{t-1}`` and is set to zero" (section 3.2). Ties go to the lowest
    slot index.

    Parameters
    ----------
    memory : Tensor of shape (batch, slots, width)
    prev_usage : Tensor of shape (batch, slots)

    Returns
    -------
    Tensor of shape (batch, slots, width)
    """
    idx = torch.argmin(prev_usage.detach(), dim=-1)
    keep = torch.ones_like(prev_usage)
    keep.scatter_(1, idx.unsqueeze(1), 0.0)
    return memory * keep.unsqueeze(-1)


def write(memory: Tensor, write_w: Tensor, content: Tensor) -> Tensor:
    """Write ``M_t(i) = M_{t-1}(i) + sum_heads w^w_t(i) c_t`` (eq. 8).

    The paper writes the key itself (``c_t = k_t``); a separate add vector can
    be passed instead.

    Parameters
    ----------
    memory : Tensor of shape (batch, slots, width)
    write_w : Tensor of shape (batch, heads, slots)
    content : Tensor of shape (batch, heads, width)

    Returns
    -------
    Tensor of shape (batch, slots, width)
    """
    return memory + torch.bmm(write_w.transpose(1, 2), content)


def lrua_step(
    state: MemoryState,
    keys: Tensor,
    gate: Tensor,
    content: Tensor,
    *,
    gamma: float = 0.95,
    read_after_write: bool = True,
    strength: Tensor | None = None,
) -> tuple[Tensor, MemoryState]:
    """One full LRUA memory step: erase, write, read, usage, least-used mask.

    Parameters
    ----------
    state : MemoryState
        State after step ``t-1``.
    keys : Tensor of shape (batch, heads, width)
        Read keys ``k_t``.
    gate : Tensor of shape (batch, heads)
        ``sigmoid(alpha_t)``.
    content : Tensor of shape (batch, heads, width)
        What each head writes (``k_t`` in the paper).
    gamma : float, default=0.95
        Usage decay (eq. 5).
    read_after_write : bool, default=True
        Read ``M_t`` (after this step's write) if True, else ``M_{t-1}``.
    strength : Tensor of shape (batch, heads), optional
        Key strength of each head (see :func:`read_weights`); None: none.

    Returns
    -------
    reads : Tensor of shape (batch, heads, width)
        ``r_t``.
    state : MemoryState
        State after step ``t``.
    """
    n_reads = keys.shape[1]
    write_w = write_weights(gate, state.read_weights, state.least_used)
    erased = erase_least_used(state.memory, state.usage)
    new_memory = write(erased, write_w, content)
    source = new_memory if read_after_write else state.memory
    read_w = read_weights(cosine_similarity(keys, source), strength)
    reads = read(read_w, source)
    usage = update_usage(state.usage, read_w, write_w, gamma)
    least_used = least_used_weights(usage, n_reads)
    return reads, MemoryState(new_memory, usage, read_w, least_used)


def lrua_step_fused(
    state: MemoryState,
    keys: Tensor,
    gate: Tensor,
    content: Tensor,
    *,
    gamma: float = 0.95,
    read_after_write: bool = True,
    strength: Tensor | None = None,
) -> tuple[Tensor, MemoryState]:
    """Same as :func:`lrua_step`, with fewer tensor operations (the fast path).

    Eq. 7 becomes one ``lerp``; erase and write (eq. 8) one ``baddbmm``; the
    usage sums reads and writes once. :func:`lrua_step`, built from the
    one-equation functions, stays the reference it is tested against.
    """
    n_reads = keys.shape[1]
    # Under torch.compile, the products below are written as broadcasts and
    # sums, which the compiler fuses with their neighbours into a few loops
    # (in eager mode they would allocate (batch, heads, slots, width) arrays;
    # there, batched matrix products are faster). Same values either way.
    fusing = torch.compiler.is_compiling()
    prev_lu = state.least_used.unsqueeze(1).expand_as(state.read_weights)
    write_w = torch.lerp(prev_lu, state.read_weights, gate.unsqueeze(-1))
    keep = torch.ones_like(state.usage).scatter_(
        1, torch.argmin(state.usage.detach(), dim=-1, keepdim=True), 0.0
    )
    erased = state.memory * keep.unsqueeze(-1)
    if fusing:
        written = (write_w.unsqueeze(-1) * content.unsqueeze(2)).sum(dim=1)
        new_memory = erased + written
    else:
        new_memory = torch.baddbmm(erased, write_w.transpose(1, 2), content)
    source = new_memory if read_after_write else state.memory
    if fusing:
        dots = (keys.unsqueeze(2) * source.unsqueeze(1)).sum(dim=-1)
    else:
        dots = torch.bmm(keys, source.transpose(1, 2))
    norms = keys.norm(dim=-1, keepdim=True) * source.norm(dim=-1).unsqueeze(1)
    read_w = read_weights(dots / (norms + _EPS), strength)
    if fusing:
        reads = (read_w.unsqueeze(-1) * source.unsqueeze(1)).sum(dim=2)
    else:
        reads = torch.bmm(read_w, source)
    usage = gamma * state.usage + (read_w + write_w).sum(dim=1)
    if fusing:  # a sort stays a library call; argmins fuse
        least_used = least_used_weights_argmin(usage, n_reads)
    else:
        least_used = least_used_weights(usage, n_reads)
    return reads, MemoryState(new_memory, usage, read_w, least_used)
