"""Multiply-accumulate counts read off an aten graph, one formula per op.

Convention (the paper's, as its MACs table counts): MACs of convolutions, linear layers and the
matrix products of attention and random mixing. Elementwise ops, norms, pooling, softmax
and FFTs count zero. A product of two activations (attention's QK^T and attn@V, whose cost
grows with tokens^2) is also marked ``attn``, so reports can show that part separately. Formulas use only the shapes recorded on the graph's nodes
(``node.meta["val"]``), so the count is exactly what the traced program executes.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.fx as fx

from .trace import module_class, module_path

aten = torch.ops.aten


def _shape(arg: object) -> Optional[torch.Size]:
    if isinstance(arg, fx.Node):
        val = arg.meta.get("val")
        if isinstance(val, torch.Tensor):
            return val.shape
    if isinstance(arg, torch.Tensor):
        return arg.shape
    return None


def _out_shape(node: fx.Node) -> torch.Size:
    val = node.meta["val"]
    if isinstance(val, (tuple, list)):  # fused attention kernels return (out, lse, ...)
        val = val[0]
    return val.shape


def _conv(node: fx.Node) -> int:
    # Each output element of a (grouped) conv sums C_in/groups * prod(kernel) products.
    # A transposed conv's weight is [C_in, C_out/groups, k...]: each *input* element
    # scatters into C_out/groups * prod(kernel) outputs.
    x, w = _shape(node.args[0]), _shape(node.args[1])
    transposed = bool(node.args[6]) if node.target is aten.convolution.default and \
        len(node.args) > 6 else False
    per = w[1] * prod(w[2:])
    if transposed:
        return prod(x) * per
    return prod(_out_shape(node)) * per


def _linear(node: fx.Node) -> int:
    # out = x @ w.T: every output element is a dot product over in_features.
    return prod(_out_shape(node)) * _shape(node.args[1])[1]


def _mm(node: fx.Node) -> int:
    a = _shape(node.args[0])
    return prod(_out_shape(node)) * a[-1]


def _addmm(node: fx.Node) -> int:  # addmm(bias, a, b) / baddbmm(bias, a, b)
    a = _shape(node.args[1])
    return prod(_out_shape(node)) * a[-1]


def _matmul(node: fx.Node) -> int:
    a = _shape(node.args[0])
    # The contracted dim is a's last (a 1-D a is a row vector); the output keeps all other
    # (broadcast) dims, so MACs = output elements * contracted length.
    return max(prod(_out_shape(node)), 1) * a[-1]


def _sdpa(node: fx.Node) -> int:
    # Two matrix products: S = Q K^T (L x S x E per batch*head) and O = P V (L x S x Ev).
    q, k, v = (_shape(a) for a in node.args[:3])
    batch = prod(q[:-2])
    length, src, e, ev = q[-2], k[-2], q[-1], v[-1]
    return batch * length * src * (e + ev)


FORMULAS: Dict[object, Callable[[fx.Node], int]] = {
    aten.convolution.default: _conv,
    aten.conv1d.default: _conv,
    aten.conv2d.default: _conv,
    aten.conv3d.default: _conv,
    aten.linear.default: _linear,
    aten.mm.default: _mm,
    aten.bmm.default: _mm,
    aten.matmul.default: _matmul,
    aten.addmm.default: _addmm,
    aten.baddbmm.default: _addmm,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten._scaled_dot_product_flash_attention.default: _sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _sdpa,
    aten._scaled_dot_product_efficient_attention.default: _sdpa,
    aten._scaled_dot_product_cudnn_attention.default: _sdpa,
}
for _name in ("conv2d.padding", "conv1d.padding", "conv3d.padding"):
    _op, _ovl = _name.split(".")
    if hasattr(getattr(aten, _op), _ovl):
        FORMULAS[getattr(getattr(aten, _op), _ovl)] = _conv


# Products whose matrix operands are these args: when all are activations (computed from
# the input, not from a parameter) the op is attention's quadratic part, not a layer.
_MATRIX_ARGS: Dict[object, Tuple[int, ...]] = {
    aten.mm.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.matmul.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.baddbmm.default: (1, 2),
}
_SDPA = {t for t, f in FORMULAS.items() if f is _sdpa}  # q, k, v are always activations


@dataclass(frozen=True)
class OpCount:
    """One counted op: the graph node's name, its aten target, module path and MACs;
    ``attn``: a product of two activations (attention's QK^T / attn@V)."""

    node: str
    op: str
    module: str
    module_class: str
    macs: int
    attn: bool = False


def node_macs(node: fx.Node) -> int:
    """MACs of one node (0 for ops outside the convention)."""
    if node.op != "call_function":
        return 0
    formula = FORMULAS.get(node.target)
    return int(formula(node)) if formula is not None else 0


def activation_nodes(gm: fx.GraphModule) -> Set[fx.Node]:
    """Nodes computed from the graph's inputs (parameters and constants are not)."""
    live: Set[fx.Node] = set()
    for node in gm.graph.nodes:  # topological order: an arg is seen before its users
        if node.op == "placeholder" or (
                node.op == "call_function" and any(a in live for a in node.all_input_nodes)):
            live.add(node)
    return live


def is_attn(node: fx.Node, live: Set[fx.Node]) -> bool:
    """Whether ``node`` multiplies two activations (the part of attention that grows with
    tokens^2); a linear layer multiplies an activation by a weight."""
    if node.target in _SDPA:
        return True
    idx = _MATRIX_ARGS.get(node.target)
    return idx is not None and all(
        i < len(node.args) and node.args[i] in live for i in idx)


def count_graph(gm: fx.GraphModule) -> List[OpCount]:
    """Every op of ``gm`` that contributes MACs, in graph order (whole batch)."""
    out = []
    live = activation_nodes(gm)
    for node in gm.graph.nodes:
        m = node_macs(node)
        if m:
            out.append(OpCount(node.name, str(node.target), module_path(node),
                               module_class(node), m, is_attn(node, live)))
    return out
