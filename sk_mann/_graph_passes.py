"""A graph pass for the compiled training step: one product per weight gradient.

Backpropagating through the 50 steps of an episode, the gradient of a weight
used at every step (the recurrent and head matrices) is a sum over steps,
``dW = sum_t g_t^T x_t``, with ``g_t`` and ``x_t`` of only ``batch`` rows.
``torch.compile`` emits it as a chain of 50 accumulating ``addmm`` calls whose
inner dimension is the batch (16): small products that mostly move the
``dW``-sized accumulator through memory. :func:`merge_accumulated_products`
rewrites every such chain into one product over all steps,
``dW = [g_1; ...; g_T]^T [x_1; ...; x_T]`` (inner dimension ``T x batch``),
the same sum in another order of additions. :class:`MergeAccumulatedProducts`
wraps it as an inductor post-grad pass that keeps inductor's on-disk cache.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch._guards import detect_fake_mode
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

__all__ = ["MergeAccumulatedProducts", "merge_accumulated_products"]

_aten = torch.ops.aten
_MM = _aten.mm.default
_ADDMM = _aten.addmm.default
_PERMUTE = _aten.permute.default
_CAT = _aten.cat.default


def _plain_addmm(node: torch.fx.Node) -> bool:
    """``addmm(acc, a, b)`` with beta = alpha = 1."""
    return node.target is _ADDMM and all(
        node.kwargs.get(k, 1) == 1 for k in ("beta", "alpha")
    )


def _is_product(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and (
        node.target is _MM or _plain_addmm(node)
    )


def _accumulates_into(node: torch.fx.Node) -> bool:
    """Whether ``node``'s only use is as the accumulator of a plain addmm."""
    if len(node.users) != 1:
        return False
    (user,) = node.users
    return _plain_addmm(user) and user.args[0] is node and user.args[1] is not node


def _chain(end: torch.fx.Node) -> tuple[list[torch.fx.Node], Any]:
    """The products summed into ``end`` (last first) and the initial accumulator."""
    nodes = [end]
    while nodes[-1].target is _ADDMM:
        acc = nodes[-1].args[0]
        if not (_is_product(acc) and _accumulates_into(acc)):
            return nodes, acc
        nodes.append(acc)
    return nodes, None


def _fake(fn: Any, *args: Any) -> Any:
    """``fn`` on the nodes' example values (FakeTensors), for ``meta["val"]``."""
    nodes: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, nodes.append)
    if any("val" not in node.meta for node in nodes):
        return None
    vals = torch.fx.node.map_arg(args, lambda node: node.meta["val"])
    leaves = torch.utils._pytree.tree_leaves(vals)
    mode = detect_fake_mode() or next(
        (v.fake_mode for v in leaves if isinstance(v, FakeTensor)), None
    )
    mode = mode or FakeTensorMode()

    def to_mode(v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or getattr(v, "fake_mode", None) is mode:
            return v
        with mode:  # an example value of another trace: same shape, this mode
            return torch.empty_strided(
                v.shape, v.stride(), dtype=v.dtype, device=v.device
            )

    vals = torch.utils._pytree.tree_map(to_mode, vals)
    with mode:
        return fn(*vals)


def _call(graph: torch.fx.Graph, fn: Any, *args: Any) -> torch.fx.Node:
    node = graph.call_function(fn, args)
    val = _fake(fn, *args)
    if val is not None:
        node.meta["val"] = val
    return node


def _stack_columns(graph: torch.fx.Graph, mats: list[torch.fx.Node]) -> torch.fx.Node:
    """``cat(mats, dim=1)``; as ``cat(x_i, 0)^T`` when every mat is ``x_i^T``."""
    if all(m.target is _PERMUTE and list(m.args[1]) == [1, 0] for m in mats):
        rows = _call(graph, _CAT, [m.args[0] for m in mats], 0)
        return _call(graph, _PERMUTE, rows, [1, 0])
    return _call(graph, _CAT, mats, 1)


def merge_accumulated_products(graph: torch.fx.Graph, min_terms: int = 2) -> int:
    """Rewrite chains ``addmm(...addmm(mm(a1, b1), a2, b2)..., an, bn)`` in place.

    Each chain of at least ``min_terms`` products, where every intermediate sum
    has no other use, becomes one ``mm(cat(a_i, dim=1), cat(b_i, dim=0))`` (an
    ``addmm`` when the chain starts from an accumulator that is not a product).

    Parameters
    ----------
    graph : torch.fx.Graph
        An aten-level graph (as inductor's post-grad passes see it).
    min_terms : int, default=2
        Shorter chains are left alone.

    Returns
    -------
    int
        The number of chains rewritten.
    """
    merged = 0
    erased: set[torch.fx.Node] = set()
    for end in reversed(list(graph.nodes)):
        if end in erased or not _is_product(end) or _accumulates_into(end):
            continue
        nodes, base = _chain(end)
        if len(nodes) < min_terms:
            continue
        terms = [
            (n.args[0], n.args[1]) if n.target is _MM else (n.args[1], n.args[2])
            for n in reversed(nodes)
        ]
        with graph.inserting_before(end):
            left = _stack_columns(graph, [a for a, _ in terms])
            right = _call(graph, _CAT, [b for _, b in terms], 0)
            if base is None:
                new = _call(graph, _MM, left, right)
            else:
                new = _call(graph, _ADDMM, base, left, right)
        end.replace_all_uses_with(new)
        for node in nodes:  # last first: each has no users left when erased
            graph.erase_node(node)
        erased.update(nodes)
        for a, _ in terms:  # transposes bypassed by _stack_columns
            if a not in erased and a.target is _PERMUTE and not a.users:
                graph.erase_node(a)
                erased.add(a)
        merged += 1
    return merged


class MergeAccumulatedProducts(CustomGraphPass):
    """:func:`merge_accumulated_products` as an inductor ``post_grad_custom_post_pass``.

    Its ``uuid`` hashes this file, so compiled kernels stay cached on disk.
    """

    def __call__(self, graph: torch.fx.Graph) -> None:
        merge_accumulated_products(graph)

    def uuid(self) -> Any:
        return get_hash_for_files((__file__,))
