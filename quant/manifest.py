"""The manifest of a quantized artifact: the fp32 artifact's, plus exactly how each group was stored."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from runtime import __version__
from runtime.artifact import SESSION_CONFIG

from . import graph as G
from . import int8_path as I8
from .formats import BLOCK_SIZE
from .quantizer import site_format
from .recipe import GROUPS, Recipe
from .source import Fp32Source

#: (group, format) whose matmuls run in float32 on weights decoded once at session load instead of
#: as MatMulNBits (``quant.graph.replace_site``): Q8_0 Dense heads see one pooled row per text, so
#: the float32 MatMul costs nothing, while MatMulNBits at level 4 would round that row to int8 blocks
#: after pooling, where nothing averages it away (docs/notes/quant.md). Formats MatMulNBits cannot
#: run are always decoded at load.
DECODE_AT_LOAD = frozenset({("projection", "Q8_0")})


def decoded_at_load(group: str, fmt) -> bool:
    """Whether ``group``'s matmuls in ``fmt`` run on weights decoded at session load."""
    return (group, fmt.name) in DECODE_AT_LOAD or not fmt.matmulnbits


@dataclass
class GraphSummary:
    """What writing one variant's graph did, for its manifest."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    integer_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    fp32_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    methods: dict[str, str] = field(default_factory=dict)
    opsets: dict[str, int] = field(default_factory=dict)
    levels: dict[int, int] = field(default_factory=dict)        # MatMulNBits bits -> accuracy_level
    level_notes: dict[str, str] = field(default_factory=dict)
    two_pass_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))   # two int8 passes
    two_pass_choice: str = ""                                     # why (or why not) two passes: the target


def variant_manifest(src: Fp32Source, recipe: Recipe, method: str, summary: GraphSummary,
                     calibration: dict | None) -> dict:
    """The quantized artifact's manifest (files are added when it is written)."""
    import onnxruntime

    fp32 = src.manifest
    # export_check describes the fp32 graph against torch; it does not hold for this graph.
    manifest = {k: v for k, v in fp32.items() if k not in ("files", "format", "format_version", "export_check")}
    groups: dict[str, object] = {g: _group_entry(recipe, g, method, summary) for g in GROUPS}
    groups["norms"] = "fp32"
    quantization = {"recipe": recipe.recipe, "method": method, "block_size": BLOCK_SIZE, "groups": groups,
                    "other_tensors": "fp32"}
    if recipe.overrides:
        quantization["site_plan"] = site_plan(recipe, src.sites)
    if calibration:
        quantization["calibration"] = calibration
    onnx_entry = dict(fp32["onnx"], opset_imports=summary.opsets)
    config = session_config_for(recipe)
    if config:
        onnx_entry[SESSION_CONFIG] = config
    manifest.update(
        variant=recipe.name,
        quantization=quantization,
        source=dict(fp32.get("source", {}), fp32_artifact=src.data_sha256, fp32_variant=fp32.get("variant")),
        onnx=onnx_entry,
        written_by={"project": "embeddinggemma-onnx", "version": __version__, "stage": "quant",
                    "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    return manifest


def session_config_for(recipe: Recipe) -> dict[str, str]:
    """The onnxruntime session config entries ``recipe``'s graph needs: the re-coding of block-stored
    integer-path groups (``a4i``) folds only with ``int8_path.RECODE_SESSION_CONFIG``; else none."""
    stored = any(recipe.integer_storage(g) for g in GROUPS if recipe.uses_integer_path(g))
    return dict(I8.RECODE_SESSION_CONFIG) if stored else {}


def site_plan(recipe: Recipe, sites) -> dict:
    """The per-layer overrides and every weight they change (name -> format), for the manifest."""
    formats = {s.name: (site_format(recipe, s).name, recipe.format_of(s.group).name) for s in sites}
    changed = {name: own for name, (own, group) in formats.items() if own != group}
    return {"overrides": [o.text for o in recipe.overrides], "sites": changed}


def _integer_storage_entry(recipe: Recipe, group: str) -> dict:
    """How an integer-path group is stored when it is not stored as its int8 codes (``a4i``)."""
    stored = recipe.integer_storage(group)
    if stored is None:
        return {}
    return {"stored_as": {"format": stored.name, "bits": stored.bits, "scales_stored_as": "float16",
                          "at_load": "constant ops decode the blocks (as ggml does) and re-code each output channel "
                                     f"to int8, clip(round(w / s)) with s = max|w| / {I8.WEIGHT_QMAX}; v_proj / down_proj "
                                     "decode to float32; onnx.session_config lets onnxruntime fold them"}}


def _group_entry(recipe: Recipe, group: str, method: str, summary: GraphSummary) -> dict:
    if recipe.uses_integer_path(group):
        static = recipe.uses_static_form(group)
        wide = "v_proj" if group == "attention" else "down_proj"   # inputs that need ~16-bit activations
        if static:   # every projection on the integer GEMM, one calibrated scale per input but down_proj's
            rest = {}
            op = "MatMulIntegerToFloat on codes of one calibrated scale per input (QuantizeLinear, static)"
            weights = "q/k/v/o_proj" if group == "attention" else "gate/up/down_proj"
            scale = {"activation_scale": "the largest calibrated max |x / s| of the input; values beyond it saturate",
                     **({"per_token_inputs": "down_proj's (the gated product): per-token codes, as in w8a8"}
                        if group == "feed_forward" else {})}
        else:
            op = "MatMulIntegerToFloat on per-token codes (QuantizeLinear of rows scaled to [-1, 1])"
            weights, scale = ("q/k/o_proj" if group == "attention" else "gate/up_proj"), {}
            if not summary.two_pass_counts.get(group, 0):
                rest = {"fp32_weights": {"which": wide, "tensors": summary.fp32_counts.get(group, 0),
                                         "why": "their inputs need ~16-bit activations; the fp32 GEMM is faster "
                                                "than two integer passes on the vector units (quant/int8_path.py)"}}
            else:
                rest = {"two_pass_weights": {"which": wide, "tensors": summary.two_pass_counts[group],
                                             "why": "its input needs ~16-bit activations: the codes and the rounding "
                                                    "residual's codes, two integer products (quant/int8_path.py)",
                                             "choice": summary.two_pass_choice}}
        return {"format": recipe.format(group), "bits": 8, "op": op, "weights": weights,
                **rest,
                "tensors": summary.integer_counts.get(group, 0), "method": summary.methods.get(group, method),
                "weight_codes": f"symmetric -{I8.WEIGHT_QMAX}..{I8.WEIGHT_QMAX}, one float32 scale per output channel",
                **scale,
                "smoothing": {"alpha": I8.SMOOTH_ALPHA, "from": "calibrated per-channel max |x|"},
                "split_channels": {"per_input": I8.OUTLIER_CHANNELS, "copies": I8.OUTLIER_SPLIT,
                                   "which": "largest calibrated max |x / s|"},
                **_integer_storage_entry(recipe, group)}
    fmt = recipe.format_of(group)
    if group == "embeddings":
        op = G.EMBEDDING_LOOKUP_OP
    else:
        op = G.DECODED_MATMUL_OP if decoded_at_load(group, fmt) else "MatMulNBits"
    entry = {"format": fmt.name, "bits": fmt.bits, "op": op, "tensors": summary.counts[group],
             "method": summary.methods.get(group, method)}
    if op == "MatMulNBits":
        entry["accuracy_level"] = summary.levels[fmt.bits]
    # every block op stores ggml's float16 scales (MatMulNBits' are widened by a Cast folded at load)
    entry["scales_stored_as"] = "float16"
    return entry
