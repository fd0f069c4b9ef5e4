"""Tests for :mod:`sk_mann._memory_op`, the memory step as compiled kernels.

The kernels' forward values and hand-written gradients are compared with the
reference step :func:`sk_mann.memory.lrua_step` and autograd through it, over
chains of steps from a wiped memory (ties in the usage included), for every
variant of the step: read after or before the write, key strengths or not, a
written content of its own or the key itself.
"""

from __future__ import annotations

import os

import pytest
import torch

from sk_mann import _memory_op as op
from sk_mann import memory as mem
from sk_mann.model import MANN

pytestmark = pytest.mark.skipif(not op.AVAILABLE, reason="needs numba")

VARIANTS = pytest.mark.parametrize(
    "raw, strength, own_content",
    [
        (True, False, False),
        (True, False, True),
        (True, True, True),
        (False, False, True),
        (False, True, False),
    ],
)


def _inputs(steps, batch, heads, width, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    return [
        (
            leaf(batch, heads, width),
            leaf(batch, heads),
            leaf(batch, heads, width),
            leaf(batch, heads),
        )
        for _ in range(steps)
    ]


def _chain(inputs, slots, raw, strength, own_content, kernel, dtype):
    """Reads of every step and the last memory, from a wiped memory."""
    batch, heads, width = inputs[0][0].shape
    state = mem.initial_state(batch, slots, width, heads, dtype=dtype)
    if kernel:
        state = state._replace(memory=state.memory.transpose(1, 2).contiguous())
    reads = []
    for raw_keys, raw_gate, raw_content, raw_beta in inputs:
        keys, gate = torch.tanh(raw_keys), torch.sigmoid(raw_gate)
        content = torch.tanh(raw_content) if own_content else keys
        beta = torch.nn.functional.softplus(raw_beta) if strength else None
        kw = {"gamma": 0.95, "read_after_write": raw}
        step = op.lrua_memory_step if kernel else mem.lrua_step
        r, state = step(state, keys, gate, content, strength=beta, **kw)
        reads.append(r)
    if kernel:
        state = state._replace(memory=state.memory.transpose(1, 2))
    return torch.stack(reads), state


@VARIANTS
def test_values_and_gradients_match_the_reference(raw, strength, own_content):
    dtype = torch.float64
    inputs = _inputs(7, 3, 4, 5, dtype)
    args = (16, raw, strength, own_content)
    ref_reads, ref_state = _chain(inputs, *args, kernel=False, dtype=dtype)
    reads, state = _chain(inputs, *args, kernel=True, dtype=dtype)
    torch.testing.assert_close(reads, ref_reads, rtol=1e-10, atol=1e-12)
    for name in mem.MemoryState._fields:
        got, want = getattr(state, name), getattr(ref_state, name)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    g = torch.Generator().manual_seed(1)
    w_reads = torch.randn(ref_reads.shape, generator=g, dtype=dtype)
    w_mem = torch.randn(ref_state.memory.shape, generator=g, dtype=dtype)
    leaves = [t for step in inputs for t in step]

    def grads(r, s):
        loss = (r * w_reads).sum() + (s.memory * w_mem).sum()
        return torch.autograd.grad(loss, leaves, allow_unused=True)

    for got, want in zip(grads(reads, state), grads(ref_reads, ref_state)):
        if want is None:  # an input this variant does not use
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_float32_paper_sizes_match():
    inputs = _inputs(5, 2, 4, 40, torch.float32, seed=3)
    args = (128, True, True, True)
    ref_reads, ref_state = _chain(inputs, *args, kernel=False, dtype=torch.float32)
    reads, state = _chain(inputs, *args, kernel=True, dtype=torch.float32)
    torch.testing.assert_close(reads, ref_reads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state.memory, ref_state.memory)
    torch.testing.assert_close(state.least_used, ref_state.least_used)


def test_gradcheck():
    """The hand-written gradient against finite differences (float64)."""
    b, h, n, w = 2, 3, 6, 4
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=True):
        x = torch.rand(*shape, generator=g, dtype=torch.float64)
        return x.requires_grad_(grad)

    least_used = torch.zeros(b, n, dtype=torch.float64)
    least_used[:, :h] = 1
    usage = rand(b, n, grad=False)

    def step(mem_t, read_w, keys, gate, content, strength):
        state = mem.MemoryState(mem_t, usage, read_w, least_used)
        reads, new = op.lrua_memory_step(state, keys, gate, content, strength=strength)
        return reads, new.memory, new.read_weights

    inputs = (
        rand(b, w, n),
        rand(b, h, n),
        rand(b, h, w),
        rand(b, h),
        rand(b, h, w),
        rand(b, h) + 0.5,
    )
    assert torch.autograd.gradcheck(step, inputs)


def test_compiled_network_uses_the_tensor_operations(monkeypatch):
    """Under torch.compile the network traces the tensor step (same result)."""
    torch.manual_seed(0)
    net = MANN(6, 2, 2, n_slots=5, slot_size=3, controller_size=4).double()
    x = torch.rand(2, 4, 6, dtype=torch.float64)
    labels = torch.rand(2, 4, 2, dtype=torch.float64)
    calls = []
    real = op.lrua_memory_step
    monkeypatch.setattr(
        op, "lrua_memory_step", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    want = net(x, labels)
    assert calls  # eager: the kernels
    calls.clear()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, labels), want)
    assert not calls


@pytest.mark.parametrize("write_content", ["key", "add"])
def test_network_forward_and_gradients_same_with_and_without(
    monkeypatch, write_content
):
    torch.manual_seed(0)
    net = MANN(
        12, 3, 3, n_slots=10, slot_size=6, controller_size=8,
        write_content=write_content, key_strength=write_content == "add",
    ).double()  # fmt: skip
    x = torch.rand(4, 9, 12, dtype=torch.float64)
    labels = torch.rand(4, 9, 3, dtype=torch.float64)

    def run(enabled):
        monkeypatch.setattr(op, "ENABLED", enabled)
        net.zero_grad()
        out = net(x, labels)
        out.square().sum().backward()
        return out, [p.grad.clone() for p in net.parameters()]

    out, grads = run(True)
    ref_out, ref_grads = run(False)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_usable_only_for_cpu_float_tensors():
    assert op.usable(torch.zeros(1))
    assert op.usable(torch.zeros(1, dtype=torch.float64))
    assert not op.usable(torch.zeros(1, dtype=torch.float16))
    assert not op.usable(torch.zeros(1, device="meta"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_trains_after_the_parent_used_threads():
    """numba's OpenMP pool terminates a forked child that starts a parallel
    region; a child of a process that ran the threaded kernels uses the
    one-thread ones."""
    torch.manual_seed(0)
    net = MANN(6, 2, 2, n_slots=8, slot_size=3, controller_size=4)
    x, labels = torch.rand(4, 3, 6), torch.rand(4, 3, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = net(x, labels)  # starts numba's threads here (if it has two)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                torch.set_num_threads(2)
                got = net(x, labels)
                got.sum().backward()
                code = 0 if torch.allclose(got, want) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        torch.set_num_threads(threads)
    assert os.waitstatus_to_exitcode(status) == 0
