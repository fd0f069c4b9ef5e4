"""The compiled training step's graph pass: one product per weight gradient."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from sk_mann._graph_passes import MergeAccumulatedProducts, merge_accumulated_products

aten = torch.ops.aten


def _count(gm, *targets):
    return sum(n.target in targets for n in gm.graph.nodes)


def _products(gm):
    return _count(gm, aten.mm.default, aten.addmm.default)


def _merged(fn, args, mode="fake", **kw):
    """(original graph module, rewritten graph module, chains merged)."""
    original = make_fx(fn, tracing_mode=mode)(*args)
    rewritten = make_fx(fn, tracing_mode=mode)(*args)
    n = merge_accumulated_products(rewritten.graph, **kw)
    rewritten.graph.lint()
    rewritten.recompile()
    return original, rewritten, n


def _grads_and_inputs(steps=5, rows=3, n_out=4, n_in=6):
    g = torch.Generator().manual_seed(0)
    kw = {"dtype": torch.float64, "generator": g}
    return torch.randn(steps, rows, n_out, **kw), torch.randn(steps, rows, n_in, **kw)


def _backward_style(gs, xs):
    """sum_t g_t^T x_t as autograd emits it: mm, then accumulating addmm."""
    acc = aten.mm.default(aten.permute.default(gs[0], [1, 0]), xs[0])
    for t in range(1, gs.shape[0]):
        acc = aten.addmm.default(acc, aten.permute.default(gs[t], [1, 0]), xs[t])
    return acc


@pytest.mark.parametrize("mode", ["fake", "real"])
def test_a_chain_becomes_one_product_with_the_same_sum(mode):
    gs, xs = _grads_and_inputs()
    original, rewritten, n = _merged(_backward_style, (gs, xs), mode=mode)
    assert n == 1
    assert _products(original) == 5 and _products(rewritten) == 1
    # The transposes are taken once, of the rows stacked over steps.
    assert _count(rewritten, aten.permute.default) == 1
    expected = torch.einsum("tbo,tbi->oi", gs, xs)
    torch.testing.assert_close(rewritten(gs, xs), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(original(gs, xs), expected, rtol=0, atol=1e-12)
    for node in rewritten.graph.nodes:
        if node.op == "call_function":
            assert "val" in node.meta  # inductor's lowering reads example values


def test_a_chain_from_a_given_accumulator_keeps_it():
    gs, xs = _grads_and_inputs()
    bias = torch.randn(4, 6, dtype=torch.float64)

    def fn(bias, gs, xs):
        acc = bias
        for t in range(gs.shape[0]):
            acc = aten.addmm.default(acc, gs[t].T, xs[t])
        return acc

    _, rewritten, n = _merged(fn, (bias, gs, xs))
    assert n == 1 and _count(rewritten, aten.addmm.default) == 1
    assert _count(rewritten, aten.mm.default) == 0
    expected = bias + torch.einsum("tbo,tbi->oi", gs, xs)
    torch.testing.assert_close(rewritten(bias, gs, xs), expected, rtol=0, atol=1e-12)


def test_operands_that_are_not_transposes_are_stacked_by_columns():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, 3, dtype=torch.float64, generator=g)
    b = torch.randn(4, 3, 5, dtype=torch.float64, generator=g)

    def fn(a, b):
        acc = aten.mm.default(a[0], b[0])
        for t in range(1, 4):
            acc = aten.addmm.default(acc, a[t], b[t])
        return acc

    _, rewritten, n = _merged(fn, (a, b))
    assert n == 1 and _products(rewritten) == 1
    torch.testing.assert_close(rewritten(a, b), (a @ b).sum(0), rtol=0, atol=1e-12)


def test_a_partial_sum_used_elsewhere_splits_the_chain():
    gs, xs = _grads_and_inputs(steps=6)

    def fn(gs, xs):
        acc = gs[0].T @ xs[0]
        for t in range(1, 6):
            acc = aten.addmm.default(acc, gs[t].T, xs[t])
            if t == 2:
                partial = acc  # read by the output: must stay computed
        return acc, partial * 2

    original, rewritten, n = _merged(fn, (gs, xs))
    assert n == 2  # steps 0-2 and 3-5 (the latter starting from the partial sum)
    assert _products(rewritten) == 2
    for got, want in zip(rewritten(gs, xs), original(gs, xs), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_scaled_addmm_short_chains_and_single_products_are_left_alone():
    gs, xs = _grads_and_inputs(steps=3)

    def fn(gs, xs, w, b):
        scaled = aten.addmm.default(gs[0].T @ xs[0], gs[1].T, xs[1], alpha=0.5)
        layer = aten.addmm.default(b, xs[2], w)  # a biased linear layer: one product
        return scaled, layer

    w = torch.randn(6, 2, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    original, rewritten, n = _merged(fn, (gs, xs, w, b))
    assert n == 0 and _products(rewritten) == _products(original) == 3
    _, _, n = _merged(_backward_style, _grads_and_inputs(), min_terms=6)
    assert n == 0  # 5 products, fewer than asked for


def test_the_pass_is_cacheable_and_runs_the_rewrite():
    gs, xs = _grads_and_inputs()
    rewritten = make_fx(_backward_style, tracing_mode="fake")(gs, xs)
    MergeAccumulatedProducts()(rewritten.graph)
    assert _products(rewritten) == 1
    # A stable, file-derived id: inductor then caches the compiled kernels.
    uuid = MergeAccumulatedProducts().uuid()
    assert uuid is not None and uuid == MergeAccumulatedProducts().uuid()
