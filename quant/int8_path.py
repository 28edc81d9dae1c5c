"""The integer path (``w8a8``): int8 weights per output channel, int8 activations per token at run time.

onnxruntime's block-quantized ``MatMulNBits`` is at best ~1.2x faster than fp32 on these CPUs
(NOTES-quant.md), while its u8 x s8 integer GEMM behind ``MatMulIntegerToFloat`` is 3-4x faster than
the fp32 GEMM. This module rewrites chosen ``MatMul(x, W)`` nodes to

    x_s  = x * (1/s)                      SmoothQuant factors s per input channel (calibrated)
    m    = max(|x_s|) per token           ReduceMax over the last axis
    q    = QuantizeLinear(x_s / m)        uint8 codes 128 + round(127 x_s / m): every row spans [-1, 1]
    y    = MatMulIntegerToFloat(q, W_q, 1/127, w_scale, 128) * m

(7-bit codes 64 + round(63 x_s / m) for x86 CPUs without VNNI, see ``ACTIVATION_BITS``)

with ``W_q = round(diag(s) W / w_scale)``, symmetric int8 codes in -127..127 and one float32
``w_scale`` per output channel. Plain per-tensor dynamic quantization (onnxruntime's
``quantize_dynamic``) loses far too much on this model (mean cosine 0.970, min 0.935 on the parity
texts): a few tokens carry activations up to 30x larger than the rest, and a few channels too.
The per-token row scale handles the first, the smoothing factors the second, and the few channels
still far above the rest are split into copies (``OUTLIER_CHANNELS``) so they do not set the row's scale.

Which weights need more is measured, not assumed: 8-bit inputs of ``v_proj`` and ``down_proj``
cost several times the Q8_0 error budget (mean cosine 0.9987 with down_proj alone), so their
input is quantized in two passes: ``q1`` as above, then the rounding residual ``x/m - deq(q1)`` by a
second QuantizeLinear at a 254x finer step, and ``y = (MMITF(q1) + MMITF(q2)) * m``: about 16-bit
activations for twice the integer work, still faster than one fp32 or MatMulNBits product. An input
read only in two passes (down_proj's) is not smoothed: that would only move difficulty into the
weights (mean cosine 0.99954 -> 0.99960 without it).

numpy and onnx only.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import MS_DOMAIN

#: Weights that take the integer path when their group asks for it (see the module docstring).
ELIGIBLE = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight_t$")
#: Weights whose input is quantized in two passes (residual too), see the module docstring.
TWO_PASS = re.compile(r"\.(v_proj|down_proj)\.weight_t$")
#: Largest weight code; -128 is never used, as in ggml's Q8_0 (keeps the codes symmetric).
WEIGHT_QMAX = 127
#: SmoothQuant migration strength: s_k = max|x_k|^alpha / max|w_k|^(1-alpha). Of 0.4 / 0.5 / 0.65 / 0.8
#: 0.5 gave the best mean and min cosine on the parity texts (NOTES-quant.md).
SMOOTH_ALPHA = 0.5
#: Input channels per activation that are split (the largest by calibrated max |x / s|). A few
#: channels carry values several times above the rest (up to 16x the median channel's max); in a
#: per-token code they set the row's scale and leave the other channels of that token few codes.
#: Each is fed to the integer product as ``OUTLIER_SPLIT`` copies of x / OUTLIER_SPLIT, reading copies
#: of its weight row: the product is unchanged, the row's max drops. Measured on the parity texts
#: (NOTES-quant.md, worst prompt): min cosine 0.99864 -> 0.99907 with 4 channels for ~8% of the speed;
#: an fp32 side product for the same channels reached 0.99931 but cost 15-24% (an N-wide MatMul + Add per weight).
OUTLIER_CHANNELS = 4
OUTLIER_SPLIT = 4
#: Activation code width. x86 CPUs without VNNI multiply u8 x s8 with vpmaddubsw, whose pair sums
#: saturate at int16: with 8-bit activation codes (up to 255) and weight codes up to 127 a sum can
#: exceed 32767. Seen under emulation of such a CPU: a product of 1,032,256 came out as 8,160.
#: 7-bit codes (up to 127) keep every pair sum below 2 * 127 * 127 = 32258.
ACTIVATION_BITS = (7, 8)
# Smoothing factors are clipped to this range so a dead or extreme channel cannot blow up a weight.
_SMOOTH_RANGE = (1e-3, 1e3)
# Rows whose max |x| is below this are all zero in practice (padding); avoids 0/0.
_TINY = 1e-30


def is_eligible(weight_name: str) -> bool:
    """Whether a weight (by its export name) may take the integer path."""
    return bool(ELIGIBLE.search(weight_name))


def is_two_pass(weight_name: str) -> bool:
    """Whether a weight's input is quantized in two passes (value and rounding residual)."""
    return bool(TWO_PASS.search(weight_name))


def smoothing_factors(act_absmax: np.ndarray, weights: list[np.ndarray], alpha: float = SMOOTH_ALPHA) -> np.ndarray:
    """SmoothQuant factors [K] for one layer input from its calibrated per-channel max |x| and the
    [K, N] weights that read it (their rows are multiplied by the factors, the input divided)."""
    act = np.asarray(act_absmax, np.float64)
    w = np.max([np.abs(np.asarray(x, np.float32)).max(axis=1) for x in weights], axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = act ** alpha / np.maximum(w, 1e-8) ** (1 - alpha)
    s = np.where(np.isfinite(s) & (act > 0), s, 1.0)
    return np.clip(s, *_SMOOTH_RANGE).astype(np.float32)


def per_channel_scales(w_t: np.ndarray, diag: np.ndarray | None = None) -> np.ndarray:
    """float32 scale per output channel of ``w_t`` [K, N]: amax/127, or with ``diag`` (the input's
    Hessian diagonal, [K]) the clipping ratio in 0.85..1 that minimises the weighted rounding error."""
    w_t = np.asarray(w_t, np.float32)
    amax = np.abs(w_t).max(axis=0)
    base = np.where(amax > 0, amax / WEIGHT_QMAX, 1.0).astype(np.float32)
    if diag is None:
        return base
    d = np.asarray(diag, np.float32)[:, None]
    best, best_err = base, None
    for ratio in (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.85):
        scale = (base * np.float32(ratio)).astype(np.float32)
        q = np.clip(np.rint(w_t / scale), -WEIGHT_QMAX, WEIGHT_QMAX)
        err = np.sum(d * (w_t - q * scale) ** 2, axis=0)
        if best_err is None:
            best_err = err
        else:
            better = err < best_err
            best = np.where(better, scale, best)
            best_err = np.where(better, err, best_err)
    return best.astype(np.float32)


def quantize_per_channel(w_t: np.ndarray, scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest symmetric int8 codes [K, N] and float32 scales [N] of ``w_t`` [K, N]; value = code * scale."""
    w_t = np.asarray(w_t, np.float32)
    scales = per_channel_scales(w_t) if scales is None else np.asarray(scales, np.float32)
    codes = np.clip(np.rint(w_t / scales), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return codes, scales


def outlier_channels(smoothed_absmax: np.ndarray, count: int | None = None) -> np.ndarray:
    """Indices (sorted) of the ``count`` input channels with the largest calibrated max |x / s|."""
    count = OUTLIER_CHANNELS if count is None else count
    if count <= 0:
        return np.zeros(0, np.int64)
    return np.sort(np.argsort(-np.asarray(smoothed_absmax, np.float64), kind="stable")[:count]).astype(np.int64)


def split_columns(k: int, outliers: np.ndarray, split: int | None = None) -> np.ndarray:
    """Which input channel feeds each column of the widened integer product: all ``k``, then the
    outlier channels ``split - 1`` more times ([k + len(outliers) * (split - 1)])."""
    split = OUTLIER_SPLIT if split is None else split
    return np.concatenate([np.arange(k), np.tile(np.asarray(outliers, np.int64), split - 1)]).astype(np.int64)


def input_divisors(smooth: np.ndarray, outliers: np.ndarray, split: int | None = None) -> np.ndarray:
    """What each input channel is divided by before the per-token code: its smoothing factor, times
    ``split`` for an outlier channel (whose ``split`` copies then sum to x / s)."""
    split = OUTLIER_SPLIT if split is None else split
    d = np.asarray(smooth, np.float32).copy()
    d[np.asarray(outliers, np.int64)] *= split
    return d


def add_integer_path(model: onnx.ModelProto, activation: str, sites: list, packed: dict[str, tuple[np.ndarray, np.ndarray]],
                     smooth: np.ndarray | None, activation_bits: int = 8, outliers: np.ndarray | None = None,
                     split: int | None = None) -> None:
    """Rewrite every MatMul in ``sites`` (all reading ``activation``) to the integer path, in place.

    ``packed`` maps each site's weight name to its (int8 codes [K, N], float32 scales [N]), already
    quantized from the smoothed weights ``diag(smooth) W``. ``activation_bits`` 8 gives codes 1..255
    (exact with VNNI or Arm dot products), 7 gives 1..127 (exact on plain AVX2 too, see
    ``ACTIVATION_BITS``). ``outliers`` (input channel indices) are divided by ``split`` more and
    appended ``split - 1`` more times (``split_columns``); the codes then have one row per widened
    column, ``[K + len(outliers) * (split - 1), N]``. The per-token quantization of the input
    is inserted once, before the first consumer, and shared by all of them. Each node keeps its
    name and output, so nothing downstream changes; the fp32 weights are removed from the graph.
    """
    graph = model.graph
    p = f"{activation}.int8"
    inits = {init.name: i for i, init in enumerate(graph.initializer)}
    for s in sites:
        if s.name in inits:
            del graph.initializer[inits.pop(s.name)]
            inits = {init.name: i for i, init in enumerate(graph.initializer)}
    consts = {f"{p}.axes": np.array([-1], np.int64), f"{p}.tiny": np.array(_TINY, np.float32)}
    x = activation
    pre = []
    has_outliers = outliers is not None and len(outliers) > 0
    split = OUTLIER_SPLIT if split is None else split
    if has_outliers:
        smooth = input_divisors(np.ones(sites[0].k, np.float32) if smooth is None else smooth, outliers, split)
    if smooth is not None:
        consts[f"{p}.inv_smooth"] = (1.0 / np.asarray(smooth, np.float32)).astype(np.float32)
        pre.append(helper.make_node("Mul", [activation, f"{p}.inv_smooth"], [f"{p}.smoothed"], name=f"{p}/smooth"))
        x = f"{p}.smoothed"
    if has_outliers:
        consts[f"{p}.copies"] = split_columns(sites[0].k, outliers, split)[sites[0].k:]  # the codes' extra rows
        pre += [helper.make_node("Gather", [x, f"{p}.copies"], [f"{p}.copies_x"], name=f"{p}/copies", axis=-1),
                helper.make_node("Concat", [x, f"{p}.copies_x"], [f"{p}.widened"], name=f"{p}/widen", axis=-1)]
        x = f"{p}.widened"
    pre += [helper.make_node("Abs", [x], [f"{p}.abs"], name=f"{p}/abs"),
            helper.make_node("ReduceMax", [f"{p}.abs", f"{p}.axes"], [f"{p}.rowmax0"], name=f"{p}/rowmax", keepdims=1),
            helper.make_node("Max", [f"{p}.rowmax0", f"{p}.tiny"], [f"{p}.rowmax"], name=f"{p}/rowmax_floor"),
            helper.make_node("Div", [x, f"{p}.rowmax"], [f"{p}.unit"], name=f"{p}/unit_rows")]
    two_pass = any(is_two_pass(site.name) for site in sites)
    # Rows span [-1, 1]: fixed symmetric codes around the zero point, the same for every batch (a
    # data-dependent range would make a text's vector depend on what it is batched with).
    half = 2 ** (activation_bits - 1) - 1
    step = 1.0 / half
    consts.update({f"{p}.a_scale": np.array(step, np.float32), f"{p}.a_zero": np.array(half + 1, np.uint8)})
    pre.append(helper.make_node("QuantizeLinear", [f"{p}.unit", f"{p}.a_scale", f"{p}.a_zero"], [f"{p}.q"],
                                name=f"{p}/quantize"))
    if two_pass:
        # The rounding residual lies in [-step/2, step/2]: the same codes at a 2*half times finer step.
        consts[f"{p}.a_scale2"] = np.array(step / (2 * half), np.float32)
        consts[f"{p}.a_zero2"] = consts[f"{p}.a_zero"]
        pre += [helper.make_node("DequantizeLinear", [f"{p}.q", f"{p}.a_scale", f"{p}.a_zero"], [f"{p}.coarse"],
                                 name=f"{p}/coarse"),
                helper.make_node("Sub", [f"{p}.unit", f"{p}.coarse"], [f"{p}.residual"], name=f"{p}/residual"),
                helper.make_node("QuantizeLinear", [f"{p}.residual", f"{p}.a_scale2", f"{p}.a_zero2"], [f"{p}.q2"],
                                 name=f"{p}/quantize_residual")]
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    by_node = {s.node_name: s for s in sites}
    nodes = list(graph.node)
    first = next(i for i, n in enumerate(nodes) if n.name in by_node)
    out_nodes = nodes[:first] + pre
    for node in nodes[first:]:
        site = by_node.get(node.name)
        if site is None:
            out_nodes.append(node)
            continue
        codes, scales = packed[site.name]
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(codes, np.int8), f"{site.name}.i8"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scales, np.float32), f"{site.name}.scale"))
        y = node.output[0]
        mm = helper.make_node("MatMulIntegerToFloat",
                              [f"{p}.q", f"{site.name}.i8", f"{p}.a_scale", f"{site.name}.scale", f"{p}.a_zero"],
                              [f"{y}.unit"], name=node.name, domain=MS_DOMAIN)
        mm.metadata_props.extend(node.metadata_props)
        if is_two_pass(site.name):
            mm.output[0] = f"{y}.unit1"
            out_nodes += [mm, helper.make_node(
                              "MatMulIntegerToFloat",
                              [f"{p}.q2", f"{site.name}.i8", f"{p}.a_scale2", f"{site.name}.scale", f"{p}.a_zero2"],
                              [f"{y}.unit2"], name=f"{node.name}/residual", domain=MS_DOMAIN),
                          helper.make_node("Add", [f"{y}.unit1", f"{y}.unit2"], [f"{y}.unit"], name=f"{node.name}/sum")]
            mm = None
        # Undo the per-token row scale. Skipping it where an RMSNorm follows (q/k/o/down) is not
        # safe: rows divided by a large max fall below the norm's epsilon (measured: min cosine
        # 0.957 instead of 0.998 with down_proj).
        out_nodes += [n for n in (mm, helper.make_node("Mul", [f"{y}.unit", f"{p}.rowmax"], [y], name=f"{node.name}/rows"))
                      if n is not None]
    del graph.node[:]
    graph.node.extend(out_nodes)
