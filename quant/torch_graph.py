"""The fp32 graph's decoder layers, run in torch with gradients (for ``--method learned`` and
``--method corrected``).

Learned rounding needs each decoder layer as a differentiable function of its weights; the
corrected method needs the inputs each projection gets once the ones before it are quantized. The layer is
taken from the fp32 ONNX graph itself, not re-implemented, so what is optimised is exactly what the
artifact computes: ``decoder_layers`` finds each layer's nodes between the residual stream entering
it and the one leaving it, and ``GraphLayer`` evaluates those nodes with torch ops. Tensors that do
not depend on the text's hidden states (attention masks, RoPE tables, shape values) are inputs
fetched from an onnxruntime session of the full graph.

Why not a converter library: onnx2torch needs torchvision and knows neither onnxruntime's fused
RMSNorm ops (``SimplifiedLayerNormalization``, ``com.microsoft.SkipSimplifiedLayerNormalization``)
nor this graph's mix; the ~15 ops a decoder layer uses are a few lines each here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper

from runtime.onnx_helpers import GraphError

from .graph import WeightSite, site_position


@dataclass
class DecoderLayer:
    """Layer ``index``: its nodes (in an order that computes them), the tensors entering it (normed
    hidden state ``h_in``, residual stream ``r_in``) and leaving it (``h_out``, ``r_out``), the
    initializers it reads and the non-residual tensors (masks, RoPE, shapes) it needs."""

    index: int
    nodes: list[onnx.NodeProto]
    h_in: str
    r_in: str
    h_out: str
    r_out: str
    initializers: list[str]
    side_inputs: list[str]
    weights: dict[str, WeightSite]   # initializer name -> site (the layer's seven projections)


def decoder_layers(model: onnx.ModelProto, sites: list[WeightSite]) -> list[DecoderLayer]:
    """Every decoder layer of the fp32 graph ``model`` (weights not loaded), in order.

    A layer starts at the normed input of its q_proj and the residual stream beside it and ends at
    the fused residual add + norm after its down_proj (``SkipSimplifiedLayerNormalization``, whose
    outputs 0 and 3 are the next layer's normed input and residual). Raises ``GraphError`` when the
    graph is not in that form (an export without onnxruntime's fused norms).
    """
    producer = {o: n for n in model.graph.node for o in n.output if o}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name for i in model.graph.initializer}
    by_layer: dict[int, dict[str, WeightSite]] = {}
    for s in sites:
        pos = site_position(s.name)
        if pos is not None:
            by_layer.setdefault(pos[0], {})[pos[1]] = s
    node_of = {n.name: n for n in model.graph.node}
    residual = _residual_tensors(model, sites)

    def fail(why: str):
        raise GraphError(f"the per-layer methods (learned, corrected) cannot find the decoder layers: {why}; "
                         "they need the fp32 artifact "
                         "of this project's export (onnxruntime's fused RMSNorm ops)")

    layers, prev_r = [], None
    for index in sorted(by_layer):
        proj = by_layer[index]
        if set(proj) != {"q", "k", "v", "o", "gate", "up", "down"}:
            fail(f"layer {index} has projections {sorted(proj)}")
        h_in = node_of[proj["q"].node_name].input[0]
        if prev_r is None:
            first = producer.get(h_in)
            if first is None or first.op_type != "SimplifiedLayerNormalization":
                fail("the first layer's input is not an RMSNorm")
            r_in = first.input[0]
        else:
            r_in = prev_r
        down_out = node_of[proj["down"].node_name].output[0]
        post = consumers.get(down_out, [])
        if len(post) != 1 or post[0].op_type != "SimplifiedLayerNormalization":
            fail(f"layer {index}'s down_proj is not followed by one RMSNorm")
        skip = consumers.get(post[0].output[0], [])
        if len(skip) != 1 or skip[0].op_type != "SkipSimplifiedLayerNormalization":
            fail(f"layer {index} does not end in a fused residual add + RMSNorm")
        h_out = skip[0].output[0]
        nodes = _nodes_between(model, {h_in, r_in}, [h_out], producer, residual, inits)
        end = nodes[-1]
        if len(end.output) < 4 or not end.output[3]:
            # the last layer's fused add leaves its residual sum unnamed (nothing reads it); the
            # learned method compares it, so this layer's copy of the node names it
            copy = onnx.NodeProto()
            copy.CopyFrom(end)
            while len(copy.output) < 4:
                copy.output.append("")
            copy.output[3] = f"learned.residual_after_layer_{index}"
            nodes[-1] = end = copy
        r_out = end.output[3]
        reads = {i for n in nodes for i in n.input if i}
        made = {o for n in nodes for o in n.output}
        side = sorted(i for i in reads - made - {h_in, r_in} if i not in inits)
        weights = {s.name: s for s in proj.values()}
        if any(s.name not in reads for s in proj.values()):
            fail(f"layer {index}'s weights are read outside its nodes")
        layers.append(DecoderLayer(index, nodes, h_in, r_in, h_out, r_out, sorted(reads & inits), side, weights))
        prev_r = r_out
    if not layers:
        fail("no decoder-layer weights")
    return layers


def _residual_tensors(model: onnx.ModelProto, sites: list[WeightSite]) -> set[str]:
    """Tensors that depend on the token embeddings (everything else depends on the mask or shapes only)."""
    table = next((s for s in sites if s.op == "Gather"), None)
    if table is None:
        raise GraphError("the graph has no token-embedding lookup")
    gather = next(n for n in model.graph.node if n.name == table.node_name)
    reached = set(gather.output)
    for n in _topological(list(model.graph.node)):
        if any(i in reached for i in n.input):
            reached.update(o for o in n.output if o)
    return reached


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every tensor is made before it is read (the exporter's optimiser
    leaves the stored order slightly off, which onnxruntime tolerates)."""
    made_here = {o for n in nodes for o in n.output if o}
    done: set[str] = set()
    order, pending = [], list(nodes)
    while pending:
        rest = [n for n in pending if any(i in made_here and i not in done for i in n.input if i)]
        ready = [n for n in pending if n not in rest]
        if not ready:
            raise GraphError("the graph has a cycle")
        order.extend(ready)
        done.update(o for n in ready for o in n.output if o)
        pending = rest
    return order


def _nodes_between(model, start: set[str], ends: list[str], producer: dict, residual: set[str],
                   inits: set[str]) -> list[onnx.NodeProto]:
    """The nodes that compute ``ends`` from ``start`` (and from tensors that do not depend on the
    hidden states), in graph order."""
    want, stack = set(), list(ends)
    while stack:
        t = stack.pop()
        if t in start or t in inits or t not in residual:
            continue
        node = producer.get(t)
        if node is None or node.name in want:
            continue
        want.add(node.name)
        stack.extend(i for i in node.input if i)
    return _topological([n for n in model.graph.node if n.name in want])


class GraphLayer:
    """One ``DecoderLayer`` evaluated in torch: ``layer(h, r, side, weights)`` -> ``(h_out, r_out)``.

    ``side`` maps the layer's side inputs to tensors; ``weights`` maps its weight initializer names
    ([K_in, N_out] float32 tensors, possibly requiring grad). Other initializers are read once.
    """

    def __init__(self, layer: DecoderLayer, read_initializer):
        self.layer = layer
        self.consts = {name: as_tensor(read_initializer(name)) for name in layer.initializers
                       if name not in layer.weights}

    def __call__(self, h: torch.Tensor, r: torch.Tensor, side: dict, weights: dict) -> tuple[torch.Tensor, torch.Tensor]:
        env = self.values(h, r, side, weights)
        return env[self.layer.h_out], env[self.layer.r_out]

    def values(self, h: torch.Tensor, r: torch.Tensor, side: dict, weights: dict, until: str | None = None) -> dict:
        """Every tensor the layer computes (by name), stopping once ``until`` is computed."""
        env = dict(self.consts)
        env.update(side)
        env.update(weights)
        env[self.layer.h_in], env[self.layer.r_in] = h, r
        for node in self.layer.nodes:
            fn = _OPS.get((node.domain or "", node.op_type))
            if fn is None:
                raise GraphError(f"the per-layer methods have no torch form of {node.op_type} ({node.name})")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            out = fn([env[i] if i else None for i in node.input], attrs)
            for name, value in zip(node.output, out if isinstance(out, tuple) else (out,)):
                if name:
                    env[name] = value
            if until is not None and until in env:
                break
        return env


def as_tensor(x) -> torch.Tensor:
    """A writable torch copy of an initializer or a fetched tensor (float64 narrowed to float32)."""
    a = np.asarray(x)
    return torch.from_numpy(np.array(a, dtype=np.float32 if a.dtype == np.float64 else a.dtype))


def _ints(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else np.asarray(t).tolist())]


def _reshape(x, shape, attrs):
    dims = _ints(shape)
    if not attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise GraphError("Slice with a step other than 1 is not supported by the per-layer methods")
        n = x.shape[a]
        s = max(0, min(n, s + n if s < 0 else s))
        e = max(0, min(n, e + n if e < 0 else e))
        index[a] = slice(s, e)
    return x[tuple(index)]


def _unsqueeze(x, axes):
    axes = _ints(axes)
    rank = x.dim() + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(a)
    return x


def _rms_norm(x, scale, eps):
    # onnxruntime computes the mean square in float32 over the last axis
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


def _simplified_ln(i, a):
    if a.get("axis", -1) != -1:
        raise GraphError("SimplifiedLayerNormalization over more than the last axis is not supported")
    return _rms_norm(i[0], i[1], a.get("epsilon", 1e-5))


def _skip_simplified_ln(i, a):
    s = i[0] + i[1]
    if len(i) > 3 and i[3] is not None:
        s = s + i[3]
    return _rms_norm(s, i[2], a.get("epsilon", 1e-5)), None, None, s


def _gelu(i, a):
    return torch.nn.functional.gelu(i[0], approximate="tanh" if a.get("approximate", b"none") in (b"tanh", "tanh") else "none")


_OPS = {
    ("", "MatMul"): lambda i, a: torch.matmul(i[0], i[1]),
    ("", "Mul"): lambda i, a: i[0] * i[1],
    ("", "Add"): lambda i, a: i[0] + i[1],
    ("", "Sub"): lambda i, a: i[0] - i[1],
    ("", "Div"): lambda i, a: i[0] / i[1],
    ("", "Neg"): lambda i, a: -i[0],
    ("", "Reshape"): lambda i, a: _reshape(i[0], i[1], a),
    ("", "Transpose"): lambda i, a: i[0].permute(*a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim()))),
    ("", "Slice"): lambda i, a: _slice(*i),
    ("", "Unsqueeze"): lambda i, a: _unsqueeze(i[0], i[1]),
    ("", "Concat"): lambda i, a: torch.cat(i, dim=a["axis"]),
    ("", "Expand"): lambda i, a: i[0].expand(torch.broadcast_shapes(tuple(i[0].shape), tuple(_ints(i[1])))),
    ("", "Softmax"): lambda i, a: torch.softmax(i[0], dim=a.get("axis", -1)),
    ("", "Gelu"): _gelu,
    ("", "Tanh"): lambda i, a: torch.tanh(i[0]),
    ("", "SimplifiedLayerNormalization"): _simplified_ln,
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): _skip_simplified_ln,
}


def numpy_initializer(model: onnx.ModelProto, folder) -> callable:
    """``read(name)`` of the fp32 graph's initializers (external data from ``folder``)."""
    from runtime.onnx_helpers import read_initializer

    by_name = {i.name: i for i in model.graph.initializer}
    return lambda name: read_initializer(by_name[name], folder)
