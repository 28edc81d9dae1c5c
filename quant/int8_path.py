"""The integer path (``w8a8``): int8 weights per output channel, int8 activations per token at run time.

onnxruntime's block-quantized ``MatMulNBits`` is little faster than fp32 on CPUs, while its u8 x s8
integer GEMM behind ``MatMulIntegerToFloat`` is several times faster than the fp32 GEMM
(docs/notes/quant.md). This module rewrites chosen ``MatMul(x, W)`` nodes to

    x_s  = x * (1/s)                      SmoothQuant factors s per input channel (calibrated), folded
                                          into the producing RMSNorm's scale where there is one, or
                                          into up_proj's scales for down_proj's input gelu(gate) x up
                                          (``_fold_divisors``), else a Mul
    m    = max(|x_s|) per token           max(ReduceMax, -ReduceMin) over the last axis
    q    = QuantizeLinear(x_s / m)        uint8 codes 128 + round(127 x_s / m): every row spans [-1, 1]
    y    = MatMulIntegerToFloat(q, W_q, 1/127, w_scale, 128) * m

(7-bit codes 64 + round(63 x_s / m) for x86 CPUs without VNNI, see ``ACTIVATION_BITS``)

with ``W_q = round(diag(s) W / w_scale)``, symmetric int8 codes in -127..127 and one float32
``w_scale`` per output channel. Plain per-tensor dynamic quantization (onnxruntime's
``quantize_dynamic``) loses far too much on this model: a few tokens carry activations many times
larger than the rest, and a few channels too.
The per-token row scale handles the first, the smoothing factors the second, and the few channels
still far above the rest are split into copies (``OUTLIER_CHANNELS``) so they do not set the row's scale.

Which weights take the path is measured, not assumed (``ELIGIBLE``, ``KEPT_FP32``): 8-bit inputs
of ``v_proj`` and ``down_proj`` cost several times the Q8_0 error budget, and plain fp32 MatMuls
for these two are exact and faster than quantizing their inputs in two passes on CPUs whose int8
products run on the vector units, so they stay fp32 there (docs/notes/quant.md). Where an int8
matrix unit runs the integer GEMM (AMX: about 5x the fp32 GEMM against 2x with VNNI) two passes
are the faster form for down_proj (``TWO_PASS``, ``two_pass``): the row's codes ``q`` and then its
rounding residual ``x_s / m - (q - zero) step``, coded again at a ``2 half`` times finer step, both
multiplied by the same int8 weight. v_proj in two passes too was slower and missed the fidelity
minimum (docs/notes/bench.md).

The static form (``a8s`` / ``f8s``, ``w8a8_fast``) trades fidelity for speed: every projection takes
the path in one pass (``STATIC_ELIGIBLE``), and ``m`` is one calibrated constant per input instead of
a per-token max (``static_max``), so no row statistics are computed and no Mul follows the product;
down_proj's input keeps per-token codes (``STATIC_PER_TOKEN``).

numpy and onnx only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.onnx_helpers import MS_DOMAIN

from .formats import BLOCK_SIZE, BlockFormat
from . import graph as G
from .graph import norm_scale_initializer

#: Weights that take the integer path when their group asks for it (see the module docstring).
ELIGIBLE = re.compile(r"\.(q_proj|k_proj|o_proj|gate_proj|up_proj)\.weight_t$")
#: Weights of an integer-path group that stay fp32: their inputs need ~16-bit activations, and the
#: fp32 GEMM is faster than two integer passes (see the module docstring).
KEPT_FP32 = re.compile(r"\.(v_proj|down_proj)\.weight_t$")
#: Of those, the weight computed in two integer passes where an int8 matrix unit makes that faster
#: (``--target x86-amx``; with v_proj too: slower and below the fidelity minimum, docs/notes/bench.md).
TWO_PASS = re.compile(r"\.down_proj\.weight_t$")
#: Weights the static form (``a8s`` / ``f8s``, ``w8a8_fast``) puts on the integer path: every projection,
#: v_proj and down_proj in one pass too. Speed first: on CPUs whose int8 products run on the vector
#: units the per-token codes and the fp32 v_proj / down_proj are most of w8a8's gap to plain dynamic
#: int8 (docs/notes/bench.md); the fidelity this costs is measured there too.
STATIC_ELIGIBLE = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight_t$")
#: Of those, the inputs that keep per-token codes in the static form: down_proj's input (the gated
#: product) spans too wide a range across tokens for one scale (docs/notes/bench.md).
STATIC_PER_TOKEN = re.compile(r"\.down_proj\.weight_t$")
#: Largest weight code; -128 is never used, as in ggml's Q8_0 (keeps the codes symmetric).
WEIGHT_QMAX = 127
#: SmoothQuant migration strength: s_k = max|x_k|^alpha / max|w_k|^(1-alpha). Of 0.4 / 0.5 / 0.65 / 0.8
#: 0.5 gave the best mean and min cosine on the parity texts (docs/notes/quant.md).
SMOOTH_ALPHA = 0.5
#: Input channels per activation that are split (the largest by calibrated max |x / s|). A few
#: channels carry values several times above the rest (up to 16x the median channel's max); in a
#: per-token code they set the row's scale and leave the other channels of that token few codes.
#: Each is fed to the integer product as ``OUTLIER_SPLIT`` copies of x / OUTLIER_SPLIT, reading copies
#: of its weight row: the product is unchanged, the row's max drops. Measured on the parity texts
#: (docs/notes/quant.md, worst prompt): min cosine 0.99864 -> 0.99907 with 4 channels for ~8% of the speed;
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
    """Whether a weight (by its export name) is computed in two integer passes where the target asks for it."""
    return bool(TWO_PASS.search(weight_name))


def is_static_eligible(weight_name: str) -> bool:
    """Whether a weight (by its export name) takes the integer path in the static form."""
    return bool(STATIC_ELIGIBLE.search(weight_name))


def keeps_per_token_codes(weight_name: str) -> bool:
    """Whether a weight's input keeps per-token codes in the static form (``STATIC_PER_TOKEN``)."""
    return bool(STATIC_PER_TOKEN.search(weight_name))


def static_input_max(act_absmax: np.ndarray, divisors: np.ndarray) -> float:
    """The static form's one activation range for an input: the largest calibrated max |x_k| / divisor_k,
    i.e. the largest per-token max |x / s| any calibration token reached (``input_divisors``)."""
    return float(np.max(np.asarray(act_absmax, np.float64) / np.asarray(divisors, np.float64)))


def keeps_fp32(weight_name: str) -> bool:
    """Whether a weight (by its export name) stays fp32 in a group on the integer path."""
    return bool(KEPT_FP32.search(weight_name))


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


@dataclass
class StoredCodes:
    """An integer-path weight stored in a block format (``a4i``) instead of as int8 codes: its codes and
    float16 block scales (of the smoothed weight, [N, K]), the per-output-channel int8 scales of their
    decoded values, and the widened input's columns (``split_columns``). The session computes the
    int8 codes when it loads (``_recode_nodes``)."""

    fmt: BlockFormat
    q: np.ndarray             # codes in ``fmt``'s convention [N, K]
    d: np.ndarray             # float16 [N, K/32]
    scales: np.ndarray        # float32 [N]
    cols: np.ndarray          # int64 [K + copies]


def stored_codes(fmt: BlockFormat, q: np.ndarray, d: np.ndarray, cols: np.ndarray) -> StoredCodes:
    """``StoredCodes`` for Q4_0 codes and scales: per-channel scale max |decoded| / 127 (1 for an all-zero channel)."""
    if fmt.bits != 4:
        raise ValueError(f"the integer path is stored in 4-bit blocks only, not {fmt.name}")
    amax = np.abs(fmt.dequantize(q, d)).max(axis=1)
    scales = np.where(amax > 0, amax / np.float32(WEIGHT_QMAX), np.float32(1)).astype(np.float32)
    return StoredCodes(fmt, q, d, scales, np.asarray(cols, np.int64))


def _half_packed(stored: StoredCodes) -> np.ndarray:
    """The 4-bit codes as ggml packs Q4_0: uint8 [N, K/32, 16], byte j = code j | code j+16 << 4."""
    n, nb = stored.d.shape
    u = np.asarray(stored.q, np.uint8).reshape(n, nb, 32)   # Q4_0 codes are unsigned 0..15
    return np.ascontiguousarray(u[..., :16] | (u[..., 16:] << np.uint8(4)))


#: Session config the re-coding needs: onnxruntime folds a constant ``DequantizeLinear`` only with its
#: QDQ transformations off (by default it keeps them for quantized-operator fusion). The manifest
#: carries it (``onnx.session_config``), so every consumer that reads the manifest loads the model alike.
RECODE_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}


def _ggml_nibble_columns(nb: int) -> np.ndarray:
    """Where column c of a Q4_0 row sits when the row's ggml bytes are read as ONNX uint4 (low nibble
    first): byte j of a block holds codes j and j + 16, so position 2j is code j and 2j + 1 is code j + 16."""
    within = np.empty(32, np.int64)
    within[np.arange(16)], within[np.arange(16, 32)] = 2 * np.arange(16), 2 * np.arange(16) + 1
    return (np.arange(nb)[:, None] * 32 + within[None, :]).reshape(-1)


def _recode_nodes(graph, site, stored: StoredCodes, out: str) -> list:
    """Constant-only ops from ``stored``'s Q4_0 blocks to the int8 codes ``out`` [K + copies, N]:
    onnxruntime's constant folding runs them once when the session loads.

    The ggml bytes are stored as they are, typed as uint4 [N, K] (zero point 8); one blocked
    ``DequantizeLinear`` decodes them exactly ((q - 8) d in float32, ggml's values) and one per-channel
    ``QuantizeLinear`` makes the codes clip(round(w / s)). The folding keeps every intermediate until it
    is done with the whole graph, so the chain is as short as it can be: about 7.5 bytes per weight
    (17 with the nibble ops it replaced; docs/notes/web.md). Needs ``RECODE_SESSION_CONFIG``."""
    p = f"{site.name}.recode"
    n, nb = stored.d.shape
    packed = _half_packed(stored)
    zero = G.add_shared_initializer(graph, f"recode.zero4.{n}x{nb}", lambda name: helper.make_tensor(   # 8 in every nibble
        name, TensorProto.UINT4, [n, nb], np.full((n * nb + 1) // 2, 0x88, np.uint8).tobytes(), raw=True))
    graph.initializer.extend([
        helper.make_tensor(f"{site.name}.q4", TensorProto.UINT4, [n, nb * 32], packed.tobytes(), raw=True),
        numpy_helper.from_array(np.ascontiguousarray(stored.d), f"{site.name}.scales"),
        numpy_helper.from_array(stored.scales.astype(np.float32), f"{p}.channel"),
        numpy_helper.from_array(np.zeros(n, np.int8), f"{p}.int8_zero"),
        numpy_helper.from_array(_ggml_nibble_columns(nb)[stored.cols], f"{p}.cols")])
    mk = G.node_maker(site.node_name)
    return [mk("Cast", [f"{site.name}.scales"], f"{p}.scales_f", to=TensorProto.FLOAT),   # float16 -> exact float32
            mk("DequantizeLinear", [f"{site.name}.q4", f"{p}.scales_f", zero], f"{p}.w", axis=1, block_size=BLOCK_SIZE),
            # round half to even, |w / s| <= 127 by the channel scale
            mk("QuantizeLinear", [f"{p}.w", f"{p}.channel", f"{p}.int8_zero"], f"{p}.codes_nk", axis=0),
            mk("Gather", [f"{p}.codes_nk", f"{p}.cols"], f"{p}.wide_nk", axis=1),   # ggml order, split copies
            mk("Transpose", [f"{p}.wide_nk"], out, perm=[1, 0])]


def add_integer_path(model: onnx.ModelProto, activation: str, sites: list, packed: dict[str, tuple[np.ndarray, np.ndarray]],
                     smooth: np.ndarray | None, activation_bits: int = 8, outliers: np.ndarray | None = None,
                     split: int | None = None, two_pass: frozenset[str] | set[str] = frozenset(),
                     static_max: float | None = None) -> None:
    """Rewrite every MatMul in ``sites`` (all reading ``activation``) to the integer path, in place.

    ``packed`` maps each site's weight name to its (int8 codes [K, N], float32 scales [N]), already
    quantized from the smoothed weights ``diag(smooth) W``; codes may be a ``StoredCodes`` (``a4i``),
    then constant ops compute them from the stored blocks when the session loads. ``activation_bits`` 8 gives codes 1..255
    (exact with VNNI or Arm dot products), 7 gives 1..127 (exact on plain AVX2 too, see
    ``ACTIVATION_BITS``). ``outliers`` (input channel indices) are divided by ``split`` more and
    appended ``split - 1`` more times (``split_columns``); the codes then have one row per widened
    column, ``[K + len(outliers) * (split - 1), N]``. The per-token quantization of the input
    is inserted once, before the first consumer, and shared by all of them; its division by the
    smoothing factors and split divisors is folded into the input's producer where that is exact
    (``_fold_divisors``), else it is a Mul. Sites named in ``two_pass`` also read the codes of the
    rounding residual (widened alike): two integer products through the same weight, summed.
    ``static_max`` (the static form, ``static_input_max``) replaces the per-token row scale by one
    calibrated constant: the smoothed input is coded at a step of ``static_max / half`` (values beyond
    it saturate) and the products need no row rescale. Each node keeps its name and output, so nothing
    downstream changes; the fp32 weights are removed from the graph.
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
    if smooth is not None and not _fold_divisors(model, activation, {s.node_name for s in sites}, smooth):
        consts[f"{p}.inv_smooth"] = (1.0 / np.asarray(smooth, np.float32)).astype(np.float32)
        pre.append(helper.make_node("Mul", [activation, f"{p}.inv_smooth"], [f"{p}.smoothed"], name=f"{p}/smooth"))
        x = f"{p}.smoothed"
    half = 2 ** (activation_bits - 1) - 1
    if static_max is None:
        # max |x| as max(max x, -min x): two reads of x instead of writing |x| and reading it back
        pre += [helper.make_node("ReduceMax", [x, f"{p}.axes"], [f"{p}.rowhi"], name=f"{p}/rowmax", keepdims=1),
                helper.make_node("ReduceMin", [x, f"{p}.axes"], [f"{p}.rowlo"], name=f"{p}/rowmin", keepdims=1),
                helper.make_node("Neg", [f"{p}.rowlo"], [f"{p}.rowlo_neg"], name=f"{p}/rowmin_neg"),
                helper.make_node("Max", [f"{p}.rowhi", f"{p}.rowlo_neg", f"{p}.tiny"], [f"{p}.rowmax"], name=f"{p}/rowmax_floor"),
                helper.make_node("Div", [x, f"{p}.rowmax"], [f"{p}.unit"], name=f"{p}/unit_rows")]
        # Rows span [-1, 1]: fixed symmetric codes around the zero point, the same for every batch (a
        # data-dependent range would make a text's vector depend on what it is batched with).
        consts[f"{p}.a_scale"] = np.array(1.0 / half, np.float32)
        unit = f"{p}.unit"
    else:   # one constant for every token: no row statistics, no row rescale after the products
        if two_pass:
            raise ValueError("the static form takes one integer pass per weight; two_pass must be empty")
        del consts[f"{p}.axes"], consts[f"{p}.tiny"]
        limit = max(float(static_max), _TINY)
        consts[f"{p}.a_scale"] = np.array(limit / half, np.float32)
        unit = x
        if activation_bits < 8:   # uint8 saturation would let codes past 127 into the pair sums (ACTIVATION_BITS)
            consts.update({f"{p}.lo": np.array(-limit, np.float32), f"{p}.hi": np.array(limit, np.float32)})
            pre.append(helper.make_node("Clip", [x, f"{p}.lo", f"{p}.hi"], [f"{p}.clipped"], name=f"{p}/clip"))
            unit = f"{p}.clipped"
    consts[f"{p}.a_zero"] = np.array(half + 1, np.uint8)
    # The split copies repeat values already in the row, so the row's max and each copy's code are
    # those of the original channel: widen the uint8 codes (a quarter of the bytes of the float
    # activations; measured in docs/notes/quant.md) rather than the activations.
    codes = f"{p}.q_narrow" if has_outliers else f"{p}.q"
    pre.append(helper.make_node("QuantizeLinear", [unit, f"{p}.a_scale", f"{p}.a_zero"], [codes],
                                name=f"{p}/quantize"))
    if two_pass:
        # the residual lies in [-step/2, step/2]: the same code range at a 2 x half times finer step
        consts[f"{p}.a_scale2"] = np.array(1.0 / half / (2 * half), np.float32)
        pre += [helper.make_node("DequantizeLinear", [codes, f"{p}.a_scale", f"{p}.a_zero"], [f"{p}.coarse"],
                                 name=f"{p}/coarse"),
                helper.make_node("Sub", [f"{p}.unit", f"{p}.coarse"], [f"{p}.residual"], name=f"{p}/residual"),
                helper.make_node("QuantizeLinear", [f"{p}.residual", f"{p}.a_scale2", f"{p}.a_zero"],
                                 [f"{p}.q2_narrow" if has_outliers else f"{p}.q2"], name=f"{p}/quantize_residual")]
    if has_outliers:
        consts[f"{p}.copies"] = split_columns(sites[0].k, outliers, split)[sites[0].k:]  # the codes' extra rows
        for narrow, wide in [(codes, f"{p}.q")] + ([(f"{p}.q2_narrow", f"{p}.q2")] if two_pass else []):
            pre += [helper.make_node("Gather", [narrow, f"{p}.copies"], [f"{wide}_copies"], name=f"{wide}/copies", axis=-1),
                    helper.make_node("Concat", [narrow, f"{wide}_copies"], [wide], name=f"{wide}/widen", axis=-1)]
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
        w_codes, scales = packed[site.name]
        if isinstance(w_codes, StoredCodes):   # the codes come from constant ops on the stored blocks
            G.require_opset(model, G.BLOCKED_DEQUANTIZE_OPSET)
            out_nodes += _recode_nodes(graph, site, w_codes, f"{site.name}.i8")
        else:
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w_codes, np.int8), f"{site.name}.i8"))
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scales, np.float32), f"{site.name}.scale"))
        y = node.output[0]
        mm = helper.make_node("MatMulIntegerToFloat",
                              [f"{p}.q", f"{site.name}.i8", f"{p}.a_scale", f"{site.name}.scale", f"{p}.a_zero"],
                              [f"{y}.unit"], name=node.name, domain=MS_DOMAIN)
        mm.metadata_props.extend(node.metadata_props)
        if site.name in two_pass:
            second = helper.make_node("MatMulIntegerToFloat", [f"{p}.q2", f"{site.name}.i8", f"{p}.a_scale2",
                                                                f"{site.name}.scale", f"{p}.a_zero"],
                                      [f"{y}.unit2"], name=f"{node.name}/residual", domain=MS_DOMAIN)
            out_nodes += [mm, second]
            mm = helper.make_node("Add", [f"{y}.unit", f"{y}.unit2"], [f"{y}.sum"], name=f"{node.name}/sum")
            y_unit = f"{y}.sum"
        else:
            y_unit = f"{y}.unit"
        # Undo the per-token row scale. A following RMSNorm does not cancel it: rows divided by a
        # large max fall below the norm's epsilon (min cosine 0.957 instead of 0.998 with down_proj),
        # and even with a constant that keeps rows >= the true ones the post-attention and
        # post-feed-forward norms, whose inputs' mean square goes down to 1e-3 and 1e-7 (eps 1e-6),
        # rely on the epsilon: mean cosine 0.992 without the Muls of q/k/o/up (docs/notes/quant.md).
        if static_max is not None:   # the static step is in a_scale: the product is the output
            mm.output[0] = y
            out_nodes.append(mm)
            continue
        out_nodes += [mm, helper.make_node("Mul", [y_unit, f"{p}.rowmax"], [y], name=f"{node.name}/rows")]
    del graph.node[:]
    graph.node.extend(out_nodes)


def _integer_factor_scale(product, producer: dict, readers_of: dict) -> str | None:
    """The per-output-channel scale initializer of the integer-path MatMul whose output is a factor of
    ``product`` (a Mul node; gelu(gate) x up in the feed-forward), directly or through its per-token
    row rescale, when nothing else reads that output; else None. Dividing those scales divides the
    product by the same [K] divisors."""
    if product is None or product.op_type != "Mul":
        return None
    for factor in product.input:
        node = producer.get(factor)
        if node is not None and node.op_type == "Mul" and node.name.endswith("/rows"):   # per-token codes
            if len(readers_of.get(factor, [])) != 1:
                continue
            factor, node = node.input[0], producer.get(node.input[0])
        if (node is not None and node.op_type == "MatMulIntegerToFloat" and node.domain == MS_DOMAIN
                and len(readers_of.get(factor, [])) == 1):
            return node.input[3]
    return None


def _fold_divisors(model: onnx.ModelProto, activation: str, readers: set[str], divisors: np.ndarray) -> bool:
    """Divide ``activation`` by ``divisors`` [K] at its producer instead of with a Mul, in place, where
    that is exact: the producer is an RMSNorm whose [K] scale nothing else reads
    (``graph.norm_scale_initializer``), and every other reader of the activation than ``readers``
    (node names) is an fp32 MatMul whose [K, N] weight nothing else reads; those weights get their
    rows multiplied by ``divisors`` (v_proj beside q/k). Or the producer is a product one of whose
    factors is an integer-path MatMul's output (``_integer_factor_scale``: up_proj's, for down_proj's
    input in the static form), whose per-channel scales are divided instead. Returns whether it
    folded. (Saves a pass over the activation per run: docs/notes/quant.md.)"""
    graph = model.graph
    if activation in {o.name for o in graph.output}:
        return False
    producer = {o: n for n in graph.node for o in n.output}
    readers_of: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers_of.setdefault(name, []).append(n)
    inits = {i.name: i for i in graph.initializer}
    k = len(divisors)

    def single_use_float(name: str, shape_ok) -> np.ndarray | None:
        init = inits.get(name)
        if init is None or init.data_location == onnx.TensorProto.EXTERNAL or len(readers_of.get(name, [])) != 1:
            return None
        value = numpy_helper.to_array(init)
        return value if value.dtype == np.float32 and shape_ok(value.shape) else None

    co_weights = []   # fp32 MatMul weights that read the activation too
    for n in readers_of.get(activation, []):
        if n.name in readers:
            continue
        w = single_use_float(n.input[1], lambda sh: len(sh) == 2 and sh[0] == k) \
            if n.op_type == "MatMul" and n.input[0] == activation else None
        if w is None:
            return False
        co_weights.append((n.input[1], w))
    scale_name = norm_scale_initializer(activation, producer, inits, {name: len(r) for name, r in readers_of.items()})
    if scale_name is None and not co_weights:
        scale_name = _integer_factor_scale(producer.get(activation), producer, readers_of)
    scale = None if scale_name is None else single_use_float(scale_name, lambda sh: sh == (k,))
    if scale is None:
        return False
    d = np.asarray(divisors, np.float32)
    inits[scale_name].CopyFrom(numpy_helper.from_array((scale / d).astype(np.float32), scale_name))
    for name, w in co_weights:
        inits[name].CopyFrom(numpy_helper.from_array((w * d[:, None]).astype(np.float32), name))
    return True
