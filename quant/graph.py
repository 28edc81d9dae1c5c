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

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import formats as F

MS_DOMAIN = "com.microsoft"
MS_OPSET = 1
#: onnxruntime's fused RMSNorm operators (written by ``export.fusions``) -> index of their scale input.
FUSED_NORM_SCALE_INPUT = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}

_GROUP_PATTERNS = (
    ("embeddings", re.compile(r"^backbone\.embed_tokens\.weight$"), "Gather"),
    ("attention", re.compile(r"^backbone\.layers\.\d+\.self_attn\.[qkvo]_proj\.weight_t$"), "MatMul"),
    ("feed_forward", re.compile(r"^backbone\.layers\.\d+\.mlp\.(gate|up|down)_proj\.weight_t$"), "MatMul"),
    ("projection", re.compile(r"^dense_weights\.\d+$"), "MatMul"),
)
#: Op that replaces the consumer of each group's weights.
QUANT_OP = {"embeddings": "GatherBlockQuantized", "attention": "MatMulNBits",
            "feed_forward": "MatMulNBits", "projection": "MatMulNBits"}

# 2-D float initializers smaller than this are constants (e.g. a RoPE table), not weights we own.
_MIN_WEIGHT_ELEMS = 4096


class GraphError(ValueError):
    """The fp32 graph does not look like an EmbeddingGemma export this stage can quantize."""


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


def find_weight_sites(model: onnx.ModelProto, block_size: int = F.BLOCK_SIZE) -> list[WeightSite]:
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


def read_initializer(tensor: TensorProto, base_dir: str | Path) -> np.ndarray:
    """The initializer's values; external data is memory-mapped read-only, not copied into memory."""
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    shape = tuple(int(d) for d in tensor.dims)
    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    path = Path(base_dir) / info["location"]
    offset = int(info.get("offset", 0))
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if "length" in info and int(info["length"]) != want:
        raise GraphError(f"external data of {tensor.name!r} has {info['length']} bytes, expected {want}")
    if not path.is_file() or path.stat().st_size < offset + want:
        raise GraphError(f"external data of {tensor.name!r} is missing or truncated in {path}; re-copy the artifact")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def internalize_external_data(model: onnx.ModelProto, base_dir: str | Path, skip: set[str] = frozenset(),
                              max_bytes: int | None = None) -> None:
    """Load the external data of every initializer not in ``skip`` (and, with ``max_bytes``, of at
    most that size) into the proto."""
    from onnx.external_data_helper import load_external_data_for_tensor

    for init in model.graph.initializer:
        if init.name in skip or init.data_location != TensorProto.EXTERNAL:
            continue
        if max_bytes is not None and _external_length(init) > max_bytes:
            continue
        load_external_data_for_tensor(init, str(base_dir))
        init.data_location = TensorProto.DEFAULT
        del init.external_data[:]


def _external_length(tensor: TensorProto) -> int:
    info = {e.key: e.value for e in tensor.external_data}
    if "length" in info:
        return int(info["length"])
    return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


@dataclass
class QuantizedWeight:
    """Packed contrib-op tensors for one site (see ``quant.formats.to_matmulnbits`` / ``to_gather_block_quantized``)."""

    bits: int
    data: np.ndarray     # uint8: MatMulNBits [N, K/32, 32*bits/8]; GatherBlockQuantized [V, H*bits/8]
    scales: np.ndarray   # float32 [N, K/32] (exact widenings of the float16 ggml scales)


#: Manifest name of a MatMul whose block-quantized weight is decoded at session load (``replace_site``).
DECODED_MATMUL_OP = "MatMul on blocks decoded once at session load (standard ops, float16 scales)"
#: How the quantized token table is looked up (see ``replace_site``).
EMBEDDING_OPS = ("gather", "gbq")
#: Manifest names of the two lookups.
EMBEDDING_OP_NAMES = {"gather": "Gather+blockwise dequantize (standard ops, float16 scales)",
                      "gbq": "GatherBlockQuantized"}


def replace_site(model: onnx.ModelProto, site: WeightSite, qw: QuantizedWeight, accuracy_level: int = 0,
                 embedding_op: str = "gather", decode_at_load: bool = False) -> None:
    """Swap one weight's consumer for its quantized op, in place, and replace the fp32 initializer.

    MatMul sites become ``com.microsoft.MatMulNBits``, or with ``decode_at_load`` keep their MatMul
    and read the weight from standard ops that decode the packed blocks (float16 scales, the
    MatMulNBits byte layout); those ops have only initializers as inputs, so onnxruntime's default
    constant folding decodes the weight once when the session loads and the MatMul runs in float32
    on the exact Q8_0/Q4_0 values: no activation rounding (accuracy level) and no per-call decode,
    for 4 bytes per weight of memory at run time. The token table (Gather site) becomes either

    * ``embedding_op="gbq"``: one ``com.microsoft.GatherBlockQuantized`` node. Its output type
      follows its scales, so exact float32 output needs float32 scales: 4 bytes per block.
    * ``embedding_op="gather"``: standard opset-13+ ops that gather the packed rows and the float16
      scales of the looked-up tokens only, then decode them (nibble unpack, ``code - zero_point``,
      times the scale widened to float32). Same values bit for bit, but the scales take 2 bytes per
      block, which saves 12.6 MB on EmbeddingGemma's 262144 x 768 table.

    The fp32 initializer is removed before the packed ones are added, so the graph never holds both
    copies of the data for long.
    """
    if embedding_op not in EMBEDDING_OPS:
        raise ValueError(f"embedding_op must be one of {EMBEDDING_OPS}, got {embedding_op!r}")
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
    data_name, scales_name = f"{site.name}.q{qw.bits}", f"{site.name}.scales"
    half_scales = (site.op == "Gather" and embedding_op == "gather") or (site.op == "MatMul" and decode_at_load)
    scales = qw.scales.astype(np.float16) if half_scales else qw.scales
    if half_scales and not np.array_equal(scales.astype(np.float32), qw.scales):
        raise ValueError(f"scales of {site.name!r} are not float16 values; the ggml formats store float16 scales")
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(qw.data), data_name))
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scales), scales_name))

    if site.op == "MatMul" and decode_at_load:
        new = _matmul_decode_nodes(graph, site, old, data_name, scales_name, qw.bits)
    elif site.op == "MatMul":
        new = [helper.make_node("MatMulNBits", [old.input[0], data_name, scales_name], list(old.output),
                                name=old.name, domain=MS_DOMAIN,
                                **F.matmulnbits_attributes(site.n, site.k, qw.bits, accuracy_level))]
    elif embedding_op == "gbq":
        new = [helper.make_node("GatherBlockQuantized", [data_name, old.input[1], scales_name], list(old.output),
                                name=old.name, domain=MS_DOMAIN, **F.gather_block_quantized_attributes(qw.bits))]
    else:
        new = _gather_dequantize_nodes(graph, site, old, data_name, scales_name, qw.bits)
    for node in new:
        node.metadata_props.extend(old.metadata_props)
    graph.node.remove(old)
    for offset, node in enumerate(new):
        graph.node.insert(node_idx + offset, node)


def _gather_dequantize_nodes(graph, site: WeightSite, old, data_name: str, scales_name: str, bits: int):
    """Standard-op lookup of a block-quantized table: only the looked-up rows are ever decoded."""
    p = f"{site.name}.dq"   # prefix for the helper tensors and nodes
    ids, out = old.input[1], old.output[0]
    mk = _node_maker(old.name)
    nodes = [mk("Gather", [data_name, ids], f"{p}.packed", axis=0),
             mk("Gather", [scales_name, ids], f"{p}.scales16", axis=0)]
    decode, values = _block_decode_nodes(graph, site, p, f"{p}.packed", f"{p}.scales16", bits, mk)
    graph.initializer.append(numpy_helper.from_array(np.array([site.k], np.int64), f"{p}.row_shape"))
    nodes += decode + [mk("Shape", [ids], f"{p}.ids_shape"),
                       mk("Concat", [f"{p}.ids_shape", f"{p}.row_shape"], f"{p}.out_shape", axis=0)]
    nodes.append(helper.make_node("Reshape", [values, f"{p}.out_shape"], [out], name=old.name))
    return nodes


def _matmul_decode_nodes(graph, site: WeightSite, old, data_name: str, scales_name: str, bits: int):
    """MatMul on a weight decoded from its packed blocks ([N, K/32, ...] -> [K, N]) by constant-only ops."""
    p = f"{site.name}.dq"
    mk = _node_maker(old.name)
    decode, values = _block_decode_nodes(graph, site, p, data_name, scales_name, bits, mk)
    graph.initializer.append(numpy_helper.from_array(np.array([site.n, site.k], np.int64), f"{p}.weight_shape"))
    decode += [mk("Reshape", [values, f"{p}.weight_shape"], f"{p}.w_nk"),
               mk("Transpose", [f"{p}.w_nk"], f"{p}.w", perm=[1, 0])]
    return decode + [helper.make_node("MatMul", [old.input[0], f"{p}.w"], list(old.output), name=old.name)]


def _node_maker(base: str):
    """make_node for helper nodes named after ``base`` and their output's last dotted part."""
    return lambda op, inputs, output, **kw: helper.make_node(op, inputs, [output], name=f"{base}/{output.rsplit('.', 1)[-1]}", **kw)


def _block_decode_nodes(graph, site: WeightSite, p: str, codes: str, scales16: str, bits: int, mk):
    """Standard ops from packed codes [rows, K/32 * 32*bits/8] or [rows, K/32, 32*bits/8] and float16
    scales [rows, K/32] to float32 values [rows, K/32, 32]: nibble unpack (4 bits), ``code -
    zero_point``, times the scale widened to float32, which is exact as ggml decodes."""
    nb, block = site.k // F.BLOCK_SIZE, F.BLOCK_SIZE
    consts = {f"{p}.zero_point": np.array(2 ** (bits - 1), np.float32),
              f"{p}.block_shape": np.array([-1, nb, block], np.int64),
              f"{p}.scale_shape": np.array([-1, nb, 1], np.int64)}
    if bits == 4:
        consts.update({f"{p}.low_mask": np.array(0x0F, np.uint8), f"{p}.shift": np.array(4, np.uint8),
                       f"{p}.last_axis": np.array([-1], np.int64)})
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    nodes = []
    if bits == 4:
        # byte i holds element 2i in its low nibble and element 2i+1 in its high nibble
        nodes += [mk("BitwiseAnd", [codes, f"{p}.low_mask"], f"{p}.low"),
                  mk("BitShift", [codes, f"{p}.shift"], f"{p}.high", direction="RIGHT"),
                  mk("Unsqueeze", [f"{p}.low", f"{p}.last_axis"], f"{p}.low1"),
                  mk("Unsqueeze", [f"{p}.high", f"{p}.last_axis"], f"{p}.high1"),
                  mk("Concat", [f"{p}.low1", f"{p}.high1"], f"{p}.pairs", axis=-1)]
        codes = f"{p}.pairs"
    nodes += [mk("Cast", [codes], f"{p}.codes_f", to=TensorProto.FLOAT),
              mk("Reshape", [f"{p}.codes_f", f"{p}.block_shape"], f"{p}.blocks"),
              mk("Sub", [f"{p}.blocks", f"{p}.zero_point"], f"{p}.centered"),
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


def add_contrib_opset(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft domain that MatMulNBits (and GatherBlockQuantized) live in."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, MS_OPSET))


def opset_imports(model: onnx.ModelProto) -> dict[str, int]:
    """``{domain: version}`` of the model, with the default domain spelled ``ai.onnx``."""
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def save_with_external_data(model: onnx.ModelProto, path: str | Path, data_name: str = "model.onnx.data") -> None:
    """Write ``path`` plus one external data file beside it (onnxruntime memory-maps it at load)."""
    path = Path(path)
    if (path.parent / data_name).exists():
        # onnx appends to an existing data file; a stale one would corrupt the offsets.
        raise FileExistsError(f"{path.parent / data_name} already exists")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    # onnx creates the data file private (0600); give it the usual umask-based mode like model.onnx.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path.parent / data_name, 0o666 & ~umask)
