"""The optimised code paths agree with the straightforward reference ones."""

from __future__ import annotations

import pytest
import torch

from sk_mann import memory as mem


def _random_state(batch=3, slots=10, width=4, heads=2):
    g = torch.Generator().manual_seed(0)
    kw = {"dtype": torch.float64, "generator": g}
    return (
        mem.MemoryState(
            torch.randn(batch, slots, width, **kw),
            torch.rand(batch, slots, **kw),
            torch.softmax(torch.randn(batch, heads, slots, **kw), dim=-1),
            mem.least_used_weights(torch.rand(batch, slots, **kw), heads),
        ),
        torch.randn(batch, heads, width, **kw),
        torch.rand(batch, heads, **kw),
        torch.randn(batch, heads, width, **kw),
    )


@pytest.mark.parametrize("read_after_write", [True, False])
@pytest.mark.parametrize("gamma", [0.95, 0.5])
def test_fused_step_equals_reference(read_after_write, gamma):
    state, keys, gate, content = _random_state()
    ref = mem.lrua_step(
        state, keys, gate, content, gamma=gamma, read_after_write=read_after_write
    )
    fast = mem.lrua_step_fused(
        state, keys, gate, content, gamma=gamma, read_after_write=read_after_write
    )
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=1e-12)
    for a, b in zip(fast[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fused_step_gradients_equal_reference():
    state, keys, gate, content = _random_state()
    grads = []
    for step in (mem.lrua_step, mem.lrua_step_fused):
        k = keys.clone().requires_grad_()
        g = gate.clone().requires_grad_()
        c = content.clone().requires_grad_()
        m = state.memory.clone().requires_grad_()
        reads, new = step(state._replace(memory=m), k, g, c)
        (reads.sum() + new.memory.square().sum()).backward()
        grads.append([t.grad for t in (k, g, c, m)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("read_after_write", [True, False])
def test_fused_step_compiled_formulas_equal_eager(monkeypatch, read_after_write):
    """The broadcast-and-sum products used under torch.compile, run eagerly."""
    state, keys, gate, content = _random_state()
    eager = mem.lrua_step_fused(
        state, keys, gate, content, read_after_write=read_after_write
    )
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    grads = []
    for _ in range(2):
        k = keys.clone().requires_grad_()
        m = state.memory.clone().requires_grad_()
        reads, new = mem.lrua_step_fused(
            state._replace(memory=m),
            k,
            gate,
            content,
            read_after_write=read_after_write,
        )
        (reads.sum() + new.memory.square().sum()).backward()
        grads.append((reads.detach(), new, k.grad, m.grad))
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    (reads_c, new_c, *grads_c), (_, _, *grads_e) = grads
    torch.testing.assert_close(reads_c, eager[0], rtol=0, atol=1e-12)
    for a, b in zip(new_c, eager[1]):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-12)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
