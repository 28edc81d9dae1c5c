"""Find EmbeddingGemma's weights in the fp32 ONNX graph and swap them for block-quantized contrib ops.

The export names every 2-D weight after its module (see ``export/graph_names.py``):

* ``backbone.embed_tokens.weight`` [vocab, hidden], input 0 of one ``Gather``     -> group ``embeddings``
* ``backbone.layers.{i}.self_attn.{q,k,v,o}_proj.weight_t`` [in, out], MatMul B   -> group ``attention``
* ``backbone.layers.{i}.mlp.{gate,up,down}_proj.weight_t`` [in, out], MatMul B    -> group ``feed_forward``
* ``dense_weights.{0,1}`` [in, out], MatMul B                                      -> group ``projection``

``MatMul(x, W_t)`` becomes ``com.microsoft.MatMulNBits(x, B, scales)`` (or stays a MatMul on a
weight that standard ops decode from the same packed blocks, folded to a constant when a session
loads) and ``Gather(table, ids)`` becomes a lookup that decodes only the gathered rows (or
``com.microsoft.GatherBlockQuantized``); the node keeps its name, its output name and its place in
the graph, so nothing downstream changes. Everything else (norms,
RoPE tables, the small constants) is left as it is, in float32.

Needs onnx and numpy only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.onnx_helpers import FUSED_NORM_SCALE_INPUT, MS_DOMAIN, GraphError

from .formats import BLOCK_SIZE, BlockFormat
from .packing import matmulnbits_attributes

_GROUP_PATTERNS = (
    ("embeddings", re.compile(r"^backbone\.embed_tokens\.weight$"), "Gather"),
    ("attention", re.compile(r"^backbone\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight_t$"), "MatMul"),
    ("feed_forward", re.compile(r"^backbone\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight_t$"), "MatMul"),
    ("projection", re.compile(r"^dense_weights\.\d+$"), "MatMul"),
)
#: Decoder-layer weights: layer index and projection name (q, k, v, o, gate, up, down).
_LAYER_SITE = re.compile(r"^backbone\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)_proj\.weight_t$")
# 2-D float initializers smaller than this are constants (e.g. a RoPE table), not weights we own.
_MIN_WEIGHT_ELEMS = 4096


@dataclass(frozen=True)
class WeightSite:
    """One quantizable weight and the single node that consumes it.

    For ``MatMul`` sites the stored initializer is ``W_t`` [K_in, N_out]; ``k`` and ``n`` are those
    dimensions. For the ``Gather`` site the table is [vocab, hidden]: ``n`` = vocab, ``k`` = hidden
    (blocks run along ``k`` in both cases, as in ggml).
    """

    name: str
    group: str
    op: str          # "MatMul" or "Gather"
    node_name: str
    activation: str  # MatMul: input A (what calibration records); Gather: the ids input
    k: int
    n: int


def group_of(name: str) -> str | None:
    """The weight group of an initializer name, or None when the name is not a quantizable weight."""
    for group, pattern, _ in _GROUP_PATTERNS:
        if pattern.match(name):
            return group
    return None


def site_position(name: str) -> tuple[int, str] | None:
    """``(layer index, projection)`` of a decoder-layer weight (``(20, "down")``), None for the table and heads."""
    m = _LAYER_SITE.match(name)
    return (int(m[1]), m[2]) if m else None


def norm_scale_initializer(activation: str, producer: dict, initializers, uses: dict[str, int]) -> str | None:
    """Name of the scale initializer of the RMSNorm that produces ``activation`` (onnxruntime's fused
    op, or the Mul by one constant that older exports end in), when nothing else reads it; else None.
    ``producer`` maps output names to nodes, ``initializers`` holds the initializer names, ``uses``
    counts the readers of each name."""
    node = producer.get(activation)
    if node is None:
        return None
    if node.op_type in FUSED_NORM_SCALE_INPUT:
        if node.output[0] != activation:
            return None   # the skip form's second output is the residual sum, not a norm
        consts = [node.input[FUSED_NORM_SCALE_INPUT[node.op_type]]]
    elif node.op_type == "Mul":
        consts = [i for i in node.input if i in initializers]
    else:
        return None
    return consts[0] if len(consts) == 1 and consts[0] in initializers and uses.get(consts[0]) == 1 else None


def find_weight_sites(model: onnx.ModelProto, block_size: int = BLOCK_SIZE) -> list[WeightSite]:
    """Every quantizable weight of the graph, in initializer order, checked against the export contract.

    Raises ``GraphError`` when a weight is consumed by anything other than exactly one node of the
    expected kind, when its dimension along the blocks is not a multiple of ``block_size``, when no
    weights are found, or when a large 2-D float initializer has a name this stage does not know
    (it would silently stay float32).
    """
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))
    sites: list[WeightSite] = []
    for init in model.graph.initializer:
        group = group_of(init.name)
        if group is None:
            if (len(init.dims) == 2 and init.data_type == TensorProto.FLOAT
                    and int(np.prod(init.dims)) >= _MIN_WEIGHT_ELEMS):
                raise GraphError(f"2-D float32 weight {init.name!r} {list(init.dims)} matches no weight group; this "
                                 "graph is not an EmbeddingGemma export the quant stage knows (re-export it with "
                                 "`embeddinggemma-export`, which names every weight)")
            continue
        expected_op = next(op for g, _, op in _GROUP_PATTERNS if g == group)
        if len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            raise GraphError(f"weight {init.name!r} should be a 2-D float32 tensor, got dims {list(init.dims)} "
                             f"and type {TensorProto.DataType.Name(init.data_type)}; is this artifact already quantized?")
        uses = consumers.get(init.name, [])
        want_slot = 0 if expected_op == "Gather" else 1
        if len(uses) != 1 or uses[0][0].op_type != expected_op or uses[0][1] != want_slot:
            found = ", ".join(f"{n.op_type}[input {s}]" for n, s in uses) or "nothing"
            raise GraphError(f"weight {init.name!r} should feed exactly one {expected_op} (input {want_slot}) but "
                             f"feeds {found}; the graph does not follow the export contract")
        node = uses[0][0]
        if expected_op == "Gather":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis != 0:
                raise GraphError(f"Gather of {init.name!r} uses axis {axis}; only row lookups (axis 0) are supported")
            n, k = init.dims
            activation = node.input[1]
        else:
            k, n = init.dims
            activation = node.input[0]
        if k % block_size:
            raise GraphError(f"weight {init.name!r}: the input dimension {k} is not a multiple of the block "
                             f"size {block_size}")
        sites.append(WeightSite(init.name, group, expected_op, node.name, activation, int(k), int(n)))
    if not sites:
        raise GraphError("the graph has no quantizable weights (none of the names backbone.embed_tokens.weight, "
                         "backbone.layers.*_proj.weight_t, dense_weights.*); re-export it with `embeddinggemma-export`")
    return sites


def head_chain(model: onnx.ModelProto, sites: list[WeightSite]) -> list[WeightSite]:
    """The projection-head sites in graph order (the first reads the pooled vector)."""
    heads = [s for s in sites if s.group == "projection" and s.op == "MatMul"]
    outputs = {n.name: n.output[0] for n in model.graph.node}
    first = [h for h in heads if h.activation not in {outputs.get(o.node_name) for o in heads}]
    if len(first) != 1:
        return []
    chain = first
    while True:
        nxt = [h for h in heads if h.activation == outputs.get(chain[-1].node_name)]
        if len(nxt) != 1:
            return chain
        chain.append(nxt[0])


def pooling_states(model: onnx.ModelProto, pooled: str) -> str | None:
    """Name of the [batch, tokens, hidden] tensor whose masked mean is ``pooled`` (the export's
    ``Div(ReduceSum(Where(mask, states, 0)), count)``), or None when the graph has another shape."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(pooled)
    for op, idx in (("Div", 0), ("ReduceSum", 0), ("Where", 1)):
        if node is None or node.op_type != op:
            return None
        name = node.input[idx]
        node = producer.get(name)
    return name


@dataclass
class QuantizedWeight:
    """One site's codes packed for onnxruntime (``quant.packing.pack_blocks``) with their float16 scales."""

    format: BlockFormat
    data: np.ndarray     # uint8 [rows, K/32, 32*bits/8]: MatMul rows are output channels, table rows are tokens
    scales: np.ndarray   # float16 [rows, K/32], the ggml scales


#: Suffix of the Cast (and its output) that widens a MatMulNBits' stored float16 scales to the float32
#: the op takes, folded to a constant when a session loads (``replace_site``).
STORED_SCALES_CAST = "/widen_scales"
#: Opset of the default domain that blocked ``DequantizeLinear`` (and 4-bit tensors) need.
BLOCKED_DEQUANTIZE_OPSET = 21
#: Manifest name of a MatMul whose block-quantized weight is decoded at session load (``replace_site``).
DECODED_MATMUL_OP = "MatMul on blocks decoded once at session load (standard ops, float16 scales)"
#: Manifest name of the quantized token-table lookup.
EMBEDDING_LOOKUP_OP = "Gather+blockwise dequantize (standard ops, float16 scales)"


def replace_site(model: onnx.ModelProto, site: WeightSite, qw: QuantizedWeight, accuracy_level: int = 0,
                 decode_at_load: bool = False, dequantize_op: bool = False) -> None:
    """Swap one weight's consumer for its quantized form, in place, and replace the fp32 initializer.

    MatMul sites become ``com.microsoft.MatMulNBits``, or, with ``decode_at_load`` or
    a format MatMulNBits cannot run, keep their MatMul and read the weight from standard ops that
    decode the packed blocks (float16 scales): those ops have only initializers as inputs, so
    onnxruntime's default constant folding decodes the weight once when the session loads and the
    MatMul runs in float32 on the exact ggml values (no activation rounding, no per-call decode) for
    4 bytes per weight of memory at run time. The token table (Gather site) becomes standard ops
    that gather the packed rows and float16 scales of the looked-up tokens only, then decode them.
    Every decode is ``(code - zero_point) * scale`` in float32, as ggml decodes, bit for bit.

    MatMulNBits takes its scales in its input's type (float32), so they are stored as the float16
    values they are (ggml's) and widened by a ``Cast`` that onnxruntime's constant folding runs once at
    load: 2 bytes per block less on disk, the same values in the kernel (``STORED_SCALES_CAST``).

    ``dequantize_op`` (8-bit formats decoded at load): decode with one blocked ``DequantizeLinear``
    instead (``_matmul_dequantize_nodes``): a third of the folding's intermediate bytes, but onnxruntime
    folds it only with the session config ``quant.int8_path.RECODE_SESSION_CONFIG``, which the graphs
    that re-code blocks at load (``a4i``) carry anyway.

    The fp32 initializer is removed before the packed ones are added, so the graph never holds both
    copies of the data for long.
    """
    graph = model.graph
    idx = next((i for i, init in enumerate(graph.initializer) if init.name == site.name), None)
    if idx is None:
        raise GraphError(f"initializer {site.name!r} not found")
    del graph.initializer[idx]
    # Older IRs list initializers among the graph inputs; drop the stale entry if present.
    for i, value in enumerate(graph.input):
        if value.name == site.name:
            del graph.input[i]
            break
    node_idx = next(i for i, node in enumerate(graph.node) if site.name in node.input)
    old = graph.node[node_idx]
    fmt = qw.format
    data_name, scales_name = f"{site.name}.q{fmt.bits}", f"{site.name}.scales"
    nbits_op = site.op == "MatMul" and fmt.matmulnbits and not decode_at_load
    one_dequantize = site.op == "MatMul" and not nbits_op and dequantize_op and fmt.bits == 8
    if one_dequantize:   # DequantizeLinear reads the codes [N, K/32, 32] as the [N, K] they are
        data = qw.data.reshape(site.n, site.k)
    else:
        data = qw.data if site.op == "MatMul" else qw.data.reshape(qw.data.shape[0], -1)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(data), data_name))
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(qw.scales), scales_name))

    if nbits_op:
        wide = f"{scales_name}{STORED_SCALES_CAST}"
        new = [helper.make_node("Cast", [scales_name], [wide], name=f"{old.name}{STORED_SCALES_CAST}",
                                to=TensorProto.FLOAT),
               helper.make_node("MatMulNBits", [old.input[0], data_name, wide], list(old.output),
                                name=old.name, domain=MS_DOMAIN,
                                **matmulnbits_attributes(site.n, site.k, fmt, accuracy_level))]
    elif one_dequantize:
        require_opset(model, BLOCKED_DEQUANTIZE_OPSET)
        new = _matmul_dequantize_nodes(graph, site, old, data_name, scales_name, fmt)
    elif site.op == "MatMul":
        new = _matmul_decode_nodes(graph, site, old, data_name, scales_name, fmt)
    else:
        new = _gather_dequantize_nodes(graph, site, old, data_name, scales_name, fmt)
    for node in new:
        node.metadata_props.extend(old.metadata_props)
    graph.node.remove(old)
    for offset, node in enumerate(new):
        graph.node.insert(node_idx + offset, node)


def _gather_dequantize_nodes(graph, site: WeightSite, old, data_name: str, scales_name: str,
                             fmt: BlockFormat):
    """Standard-op lookup of a block-quantized table: only the looked-up rows are ever decoded."""
    p = f"{site.name}.dq"   # prefix for the helper tensors and nodes
    ids, out = old.input[1], old.output[0]
    mk = node_maker(old.name)
    nodes = [mk("Gather", [data_name, ids], f"{p}.packed", axis=0),
             mk("Gather", [scales_name, ids], f"{p}.scales16", axis=0)]
    decode, values = _block_decode_nodes(graph, site, p, f"{p}.packed", f"{p}.scales16", fmt, mk)
    graph.initializer.append(numpy_helper.from_array(np.array([site.k], np.int64), f"{p}.row_shape"))
    nodes += decode + [mk("Shape", [ids], f"{p}.ids_shape"),
                       mk("Concat", [f"{p}.ids_shape", f"{p}.row_shape"], f"{p}.out_shape", axis=0)]
    nodes.append(helper.make_node("Reshape", [values, f"{p}.out_shape"], [out], name=old.name))
    return nodes


def _matmul_decode_nodes(graph, site: WeightSite, old, data_name: str, scales_name: str, fmt: BlockFormat):
    """MatMul on a weight decoded from its packed blocks ([N, K/32, ...] -> [K, N]) by constant-only ops."""
    p = f"{site.name}.dq"
    mk = node_maker(old.name)
    decode, values = _block_decode_nodes(graph, site, p, data_name, scales_name, fmt, mk)
    graph.initializer.append(numpy_helper.from_array(np.array([site.n, site.k], np.int64), f"{p}.weight_shape"))
    decode += [mk("Reshape", [values, f"{p}.weight_shape"], f"{p}.w_nk"),
               mk("Transpose", [f"{p}.w_nk"], f"{p}.w", perm=[1, 0])]
    return decode + [helper.make_node("MatMul", [old.input[0], f"{p}.w"], list(old.output), name=old.name)]


def require_opset(model: onnx.ModelProto, version: int) -> None:
    """Raise the default domain's opset import to at least ``version`` (the ops used are unchanged)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, version)
            return
    model.opset_import.append(helper.make_opsetid("", version))


def add_shared_initializer(graph, name: str, make) -> str:
    """``name``, added to the graph's initializers as ``make(name)`` (a TensorProto) unless it is there
    already: a constant every weight of one shape reads, stored once."""
    if not any(init.name == name for init in graph.initializer):
        graph.initializer.append(make(name))
    return name


def _matmul_dequantize_nodes(graph, site: WeightSite, old, data_name: str, scales_name: str, fmt: BlockFormat):
    """MatMul on an 8-bit weight [N, K] decoded by one blocked ``DequantizeLinear`` ((code - zero point)
    * scale in float32, exact as ggml decodes)."""
    p = f"{site.name}.dq"
    mk = node_maker(old.name)
    nb = site.k // BLOCK_SIZE
    zero = add_shared_initializer(graph, f"decode.zero8.{site.n}x{nb}", lambda name: numpy_helper.from_array(
        np.full((site.n, nb), fmt.zero_point, np.uint8), name))
    return [mk("Cast", [scales_name], f"{p}.scales_f", to=TensorProto.FLOAT),   # float16 -> exact float32
            mk("DequantizeLinear", [data_name, f"{p}.scales_f", zero], f"{p}.w_nk", axis=1, block_size=BLOCK_SIZE),
            mk("Transpose", [f"{p}.w_nk"], f"{p}.w", perm=[1, 0]),
            helper.make_node("MatMul", [old.input[0], f"{p}.w"], list(old.output), name=old.name)]


def node_maker(base: str):
    """make_node for helper nodes named after ``base`` and their output's last dotted part."""
    return lambda op, inputs, output, **kw: helper.make_node(op, inputs, [output], name=f"{base}/{output.rsplit('.', 1)[-1]}", **kw)


def _block_decode_nodes(graph, site: WeightSite, p: str, codes: str, scales16: str, fmt: BlockFormat, mk):
    """Standard ops from packed codes ([rows, K/32 * block bytes] or [rows, K/32, block bytes],
    ``quant.packing``) and float16 scales [rows, K/32] to float32 values [rows, K/32, 32]: unpack,
    ``code - zero_point``, times the scale widened to float32, which is exact as ggml decodes."""
    nb, block = site.k // BLOCK_SIZE, BLOCK_SIZE
    consts = {f"{p}.zero_point": np.array(fmt.zero_point, np.float32),
              f"{p}.block_shape": np.array([-1, nb, block], np.int64),
              f"{p}.scale_shape": np.array([-1, nb, 1], np.int64)}
    if fmt.bits < 8:
        consts.update({f"{p}.low_mask": np.array(0x0F, np.uint8), f"{p}.shift": np.array(4, np.uint8),
                       f"{p}.last_axis": np.array([-1], np.int64)})
    nodes = []
    planes = fmt.bits - 4 if 4 < fmt.bits < 8 else 0   # bits above the low nibble, stored as bit planes
    if planes:
        # each block: half a block of low-nibble bytes, then one bit plane (4 bytes) per higher bit
        half = block // 2
        consts.update({f"{p}.packed_shape": np.array([-1, nb, fmt.block_bytes], np.int64),
                       f"{p}.zero_index": np.array([0], np.int64),
                       f"{p}.half_block": np.array([half], np.int64),
                       f"{p}.block_end": np.array([fmt.block_bytes], np.int64),
                       f"{p}.bit_shifts": np.arange(8, dtype=np.uint8),
                       f"{p}.one": np.array(1, np.uint8),
                       f"{p}.planes_shape": np.array([-1, nb, planes, block], np.int64),
                       f"{p}.plane_values": (2.0 ** np.arange(4, fmt.bits)).astype(np.float32).reshape(planes, 1),
                       f"{p}.planes_axis": np.array([2], np.int64)})
        nodes += [mk("Reshape", [codes, f"{p}.packed_shape"], f"{p}.packed_blocks"),
                  mk("Slice", [f"{p}.packed_blocks", f"{p}.zero_index", f"{p}.half_block", f"{p}.last_axis"],
                     f"{p}.nibble_bytes"),
                  mk("Slice", [f"{p}.packed_blocks", f"{p}.half_block", f"{p}.block_end", f"{p}.last_axis"],
                     f"{p}.plane_bytes"),
                  # plane byte j holds elements 8j..8j+7 of its block, element 8j+b in bit b
                  mk("Unsqueeze", [f"{p}.plane_bytes", f"{p}.last_axis"], f"{p}.plane_bytes1"),
                  mk("BitShift", [f"{p}.plane_bytes1", f"{p}.bit_shifts"], f"{p}.plane_shifted", direction="RIGHT"),
                  mk("BitwiseAnd", [f"{p}.plane_shifted", f"{p}.one"], f"{p}.plane_bits"),
                  mk("Cast", [f"{p}.plane_bits"], f"{p}.plane_bits_f", to=TensorProto.FLOAT),
                  mk("Reshape", [f"{p}.plane_bits_f", f"{p}.planes_shape"], f"{p}.planes"),
                  mk("Mul", [f"{p}.planes", f"{p}.plane_values"], f"{p}.plane_parts"),
                  mk("ReduceSum", [f"{p}.plane_parts", f"{p}.planes_axis"], f"{p}.high_part", keepdims=0)]
        codes = f"{p}.nibble_bytes"
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    if fmt.bits < 8:
        # byte i holds element 2i in its low nibble and element 2i+1 in its high nibble
        nodes += [mk("BitwiseAnd", [codes, f"{p}.low_mask"], f"{p}.low"),
                  mk("BitShift", [codes, f"{p}.shift"], f"{p}.high", direction="RIGHT"),
                  mk("Unsqueeze", [f"{p}.low", f"{p}.last_axis"], f"{p}.low1"),
                  mk("Unsqueeze", [f"{p}.high", f"{p}.last_axis"], f"{p}.high1"),
                  mk("Concat", [f"{p}.low1", f"{p}.high1"], f"{p}.pairs", axis=-1)]
        codes = f"{p}.pairs"
    nodes += [mk("Cast", [codes], f"{p}.codes_f", to=TensorProto.FLOAT),
              mk("Reshape", [f"{p}.codes_f", f"{p}.block_shape"], f"{p}.blocks")]
    blocks = f"{p}.blocks"
    if planes:   # small integers: the float sum is exact
        nodes.append(mk("Add", [blocks, f"{p}.high_part"], f"{p}.all_blocks"))
        blocks = f"{p}.all_blocks"
    nodes += [mk("Sub", [blocks, f"{p}.zero_point"], f"{p}.centered"),
              mk("Cast", [scales16], f"{p}.scales_f", to=TensorProto.FLOAT),
              mk("Reshape", [f"{p}.scales_f", f"{p}.scale_shape"], f"{p}.scales_b"),
              # (code - zero_point) * scale is exact in float32: as ggml decodes, bit for bit
              mk("Mul", [f"{p}.centered", f"{p}.scales_b"], f"{p}.values")]
    return nodes, f"{p}.values"


def strip_debug_metadata(model: onnx.ModelProto) -> int:
    """Drop the exporter's per-node debugging metadata (module paths, class names; ~1.5 MB of the
    real graph); returns how many entries were removed. The fp32 artifact keeps them."""
    removed = 0
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if not _DEBUG_METADATA.match(p.key)]
        removed += len(node.metadata_props) - len(keep)
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    return removed


_DEBUG_METADATA = re.compile(r"^(namespace|pkg\.torch\.onnx\..*|pkg\.onnxscript\..*)$")
