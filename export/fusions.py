"""Fuse the exported RMSNorms into onnxruntime's normalisation operators.

torch's exporter writes each Gemma RMSNorm as seven nodes (Pow, ReduceMean, Add, Sqrt, Reciprocal,
Mul, Mul) and onnxruntime's own session optimiser does not match that form, so 145 norms ran as
about a thousand small kernels. onnxruntime's transformer optimiser (``onnxruntime.transformers``,
shipped in the onnxruntime wheel) has the fusions: RMSNorm -> ``SimplifiedLayerNormalization`` and
residual Add + RMSNorm -> ``SkipSimplifiedLayerNormalization`` (com.microsoft): faster, with the
same embeddings to float rounding (docs/notes/bench.md). The quantized variants inherit the fused graph.
"""
from __future__ import annotations

import logging
from collections import Counter

import onnx

from runtime.onnx_helpers import FUSED_NORM_SCALE_INPUT, add_contrib_opset

log = logging.getLogger("export")

#: Operators that replace the exported RMSNorm chains.
NORM_OPS = tuple(FUSED_NORM_SCALE_INPUT)


def fuse_rms_norms(model: onnx.ModelProto) -> dict[str, int]:
    """Fuse RMSNorm chains in ``model`` in place; returns how many nodes of each fused type it has.

    The skip fusion checks the Add's input shapes by symbolic shape inference, which reads small
    constants (shape values, frequencies): those must be loaded, large weights may stay external.
    """
    # Imported here: only the export needs the optimiser package.
    import onnxruntime.transformers  # noqa: F401  (puts its module folder on sys.path for its own imports)
    from onnxruntime.transformers.fusion_simplified_layernorm import (
        FusionSimplifiedLayerNormalization,
        FusionSkipSimplifiedLayerNormalization,
    )
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    FusionSimplifiedLayerNormalization(wrapped).apply()
    FusionSkipSimplifiedLayerNormalization(wrapped).apply()
    wrapped.prune_graph()
    add_contrib_opset(model)
    counts = Counter(n.op_type for n in model.graph.node)
    left = counts.get("Pow", 0)
    if left:
        log.warning("%d Pow nodes were not fused into RMSNorm operators; the graph is correct but slower", left)
    return {op: counts.get(op, 0) for op in NORM_OPS}
