"""The integer path (w8a8): graph rewrite numerics against a numpy model of the same arithmetic,
the smoothing folds, per-channel GPTQ and smoothing factors, and the tiny-model variant."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant import int8_path as I8
from quant.gptq import gptq_factor, gptq_quantize_per_channel
from quant.graph import WeightSite
from quant.recipe import INTEGER_FORMAT
from runtime import Embedder
from runtime.artifact import read_manifest
from tiny_checkpoint import TINY_TEXTS

K, N = 64, 48


def _one_matmul_model(w: np.ndarray, weight_name: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])
    node = helper.make_node("MatMul", ["x", weight_name], ["y"], name="mm")
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, weight_name)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model


def _quantize(x: np.ndarray, scale: float, zero: int):
    """ONNX QuantizeLinear to uint8 (round half to even, saturate), from the operator's specification."""
    return np.clip(np.rint(x / np.float32(scale)) + zero, 0, 255)


def _numpy_integer_path(x, codes, scales, smooth, bits=8):
    """The arithmetic quant.int8_path documents, in float64: rows scaled to [-1, 1], fixed symmetric codes."""
    half = 2 ** (bits - 1) - 1
    step = np.float32(1.0 / half)
    xs = x / smooth
    rowmax = np.maximum(np.abs(xs).max(axis=-1, keepdims=True), 1e-30)
    q = _quantize(xs / rowmax, step, half + 1)
    return ((q - half - 1) @ codes.astype(np.float64)) * step * scales * rowmax


@pytest.mark.parametrize("bits", I8.ACTIVATION_BITS)
def test_rewrite_matches_the_arithmetic_it_claims(bits):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[0, 1] *= 40          # a token 40x larger than the rest: the per-token scale must absorb it
    x[..., 3] *= 10        # an outlier channel: the smoothing factors must absorb it
    name = "backbone.layers.0.mlp.up_proj.weight_t"
    assert I8.is_eligible(name) and not I8.keeps_fp32(name)
    smooth = I8.smoothing_factors(np.abs(x).reshape(-1, K).max(0), [w])
    codes, scales = I8.quantize_per_channel(w * smooth[:, None])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, smooth, activation_bits=bits)
    onnx.checker.check_model(model)
    assert not [i for i in model.graph.initializer if i.name == name], "the fp32 weight must be gone"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("QuantizeLinear") == 1 and "MatMul" not in ops
    assert ops.count("Mul") == 2   # the smoothing (a graph input has no producer to fold into) and the row scale
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = _numpy_integer_path(x.astype(np.float64), codes, scales, smooth.astype(np.float64), bits)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # and it is an accurate product: the error against the fp32 matmul is small
    exact = x @ w
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert rel < 0.02 * 2 ** (8 - bits), rel


@pytest.mark.parametrize("bits", I8.ACTIVATION_BITS)
def test_static_rewrite_codes_every_token_at_one_calibrated_step(bits):
    """The static form: the smoothed input coded at the step static_max / half for every token (beyond it
    saturated), no row statistics and no row rescale; the product matches that arithmetic."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(K, N)).astype(np.float32)
    calib = rng.normal(size=(40, K)).astype(np.float32)
    calib[:, 3] *= 10
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[..., 3] *= 10
    x[0] = calib[:5]       # tokens within the calibrated range
    x[1, 2] *= 3           # a token past it: its large values saturate
    name = "backbone.layers.0.mlp.down_proj.weight_t"
    assert I8.is_static_eligible(name) and I8.is_static_eligible(name.replace("down", "v"))
    assert not I8.is_static_eligible("dense_weights.0.weight_t")
    absmax = np.abs(calib).max(0)
    smooth = I8.smoothing_factors(absmax, [w])
    static_max = I8.static_input_max(absmax, smooth)
    assert static_max == pytest.approx(float(np.abs(calib / smooth).max()), rel=1e-6)  # the largest calibrated token
    codes, scales = I8.quantize_per_channel(w * smooth[:, None])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, smooth, activation_bits=bits, static_max=static_max)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    # smoothing, (7-bit codes: clipped to the range, so no code passes 127), codes, product
    assert ops == ["Mul", *(["Clip"] if bits < 8 else []), "QuantizeLinear", "MatMulIntegerToFloat"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    half = 2 ** (bits - 1) - 1
    step = np.float32(static_max / half)
    xs = (x / smooth).astype(np.float32)
    q = _quantize(np.clip(xs, -static_max, static_max) if bits < 8 else xs, step, half + 1)
    assert np.abs(xs[1, 2]).max() > static_max   # the token past the range is there ...
    assert q.max() == (2 * half + 1 if bits < 8 else 255)   # ... and saturates: 7-bit codes stay <= 127
    want = ((q - half - 1) @ codes.astype(np.float64)) * np.float64(step) * scales
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # within the calibrated range it is an accurate product (measured 0.021 / 0.011 relative error, 7 / 8 bits)
    exact = x[0] @ w
    assert np.linalg.norm(got[0] - exact) / np.linalg.norm(exact) < 0.015 * 2 ** (8 - bits)
    with pytest.raises(ValueError, match="one integer pass"):
        I8.add_integer_path(_one_matmul_model(w, name), "x", [site], {name: (codes, scales)}, smooth,
                            two_pass={name}, static_max=static_max)


@pytest.mark.parametrize("bits, split", [(7, False), (8, False), (8, True)])
def test_two_pass_rewrite_codes_the_rounding_residual_too(bits, split):
    """down_proj on an AMX target: the row's codes, then the residual at a 2 x half finer step, both
    through the same int8 weight (widened alike when channels are split); the activation error all but
    vanishes."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[0, 1] *= 40
    name = "backbone.layers.0.mlp.down_proj.weight_t"
    assert I8.keeps_fp32(name) and I8.is_two_pass(name) and not I8.is_two_pass(name.replace('down', 'v'))
    assert not I8.is_eligible(name)
    idx = np.array([5, 17]) if split else np.zeros(0, np.int64)
    cols = I8.split_columns(K, idx, 4)
    divisors = I8.input_divisors(np.ones(K, np.float32), idx, 4)
    codes, scales = I8.quantize_per_channel((w * divisors[:, None])[cols])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, None, activation_bits=bits,
                        outliers=idx if split else None, split=4, two_pass={name})
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("QuantizeLinear") == 2 and "MatMul" not in ops
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # numpy model of the arithmetic: codes q of x / m, then codes of the residual x / m - (q - zero) step
    half = 2 ** (bits - 1) - 1
    step, step2 = np.float32(1.0 / half), np.float32(1.0 / half / (2 * half))
    x = (x / divisors).astype(np.float32)[..., cols]   # what the codes are of: each split copy x / 4
    xd = x.astype(np.float64)
    rowmax = np.maximum(np.abs(xd).max(axis=-1, keepdims=True), 1e-30)
    unit = (x / rowmax.astype(np.float32)).astype(np.float32)
    q1 = _quantize(unit, step, half + 1)
    residual = unit - ((q1 - half - 1) * step).astype(np.float32)
    q2 = _quantize(residual, step2, half + 1)
    assert np.abs(q2 - half - 1).max() <= half   # the residual fits the code range
    cw = codes.astype(np.float64)
    want = (((q1 - half - 1) @ cw) * step + ((q2 - half - 1) @ cw) * step2) * scales * rowmax
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # against the product with the same int8 weight and exact activations, two passes leave about
    # 1 / (2 half) of one pass's activation error
    exact = xd @ (cw * scales)
    one_pass = _numpy_integer_path(xd, codes, scales, np.ones(xd.shape[-1]), bits)
    err = lambda y: np.linalg.norm(y - exact) / np.linalg.norm(exact)  # noqa: E731
    assert err(got) < err(one_pass) / half, (err(got), err(one_pass))


def test_split_outlier_channels_keep_the_product_and_the_other_channels_precision():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[:, 0, [5, 17]] *= 12      # a sink-like token: two channels far above the rest
    name = "backbone.layers.0.mlp.up_proj.weight_t"
    smooth = np.ones(K, np.float32)   # smoothing would absorb part of the outliers
    idx = I8.outlier_channels(np.abs(x).reshape(-1, K).max(0) / smooth, 2)
    np.testing.assert_array_equal(idx, [5, 17])
    cols = I8.split_columns(K, idx, 4)
    assert cols.tolist() == list(range(K)) + [5, 17] * 3
    codes, scales = I8.quantize_per_channel((w * smooth[:, None])[cols])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, smooth, outliers=idx, split=4)
    onnx.checker.check_model(model)
    # the copies are made of the uint8 codes, not of the float activations
    concat = [n for n in model.graph.node if n.op_type == "Concat"]
    quantized = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert len(concat) == 1 and concat[0].input[0] in quantized
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # reference: each outlier channel fed as 4 copies of x / (4 s), each reading the row W s
    widened = (x.astype(np.float64) / I8.input_divisors(smooth, idx, 4))[..., cols]
    want = _numpy_integer_path(widened, codes, scales, np.ones(len(cols)))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # with exact activations the widened product is the original one (copies sum back) ...
    wide_exact = widened @ (w * smooth[:, None]).astype(np.float64)[cols]
    np.testing.assert_allclose(wide_exact, x.astype(np.float64) @ w, rtol=1e-6, atol=1e-4)
    # ... and the sink token's activation codes lose less (error against each path's own weights)
    plain_codes, plain_scales = I8.quantize_per_channel(w * smooth[:, None])
    plain = _numpy_integer_path(x.astype(np.float64), plain_codes, plain_scales, smooth.astype(np.float64))
    ref_plain = (x / smooth) @ (plain_codes * plain_scales.astype(np.float64))
    ref_wide = widened @ (codes * scales.astype(np.float64))
    err = lambda y, r: np.linalg.norm(y[:, 0] - r[:, 0]) / np.linalg.norm(r[:, 0])  # noqa: E731
    assert err(got, ref_wide) < err(plain, ref_plain) / 2, (err(got, ref_wide), err(plain, ref_plain))


def _norm_attention_model(rng, extra_reader: bool = False):
    """RMSNorm (onnxruntime's fused op) -> q/k (to the integer path) and v (stays fp32), as in a
    Gemma 3 layer; ``extra_reader`` adds an Add that reads the norm's output too."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])
    pre = "backbone.layers.0.self_attn."
    weights = {pre + "q_proj.weight_t": rng.normal(size=(K, N)), pre + "k_proj.weight_t": rng.normal(size=(K, N // 2)),
               pre + "v_proj.weight_t": rng.normal(size=(K, N // 2)), "gamma": 1 + rng.random(K)}
    weights = {n: v.astype(np.float32) for n, v in weights.items()}
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "gamma"], ["normed"], name="norm", axis=-1, epsilon=1e-6)]
    outputs = []
    for proj in ("q", "k", "v"):
        nodes.append(helper.make_node("MatMul", ["normed", f"{pre}{proj}_proj.weight_t"], [proj], name=proj))
        outputs.append(helper.make_tensor_value_info(proj, TensorProto.FLOAT, None))
    if extra_reader:
        nodes.append(helper.make_node("Add", ["normed", "x"], ["sum"], name="sum"))
        outputs.append(helper.make_tensor_value_info("sum", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [x], outputs, [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    sites = [WeightSite(pre + "q_proj.weight_t", "attention", "MatMul", "q", "normed", K, N),
             WeightSite(pre + "k_proj.weight_t", "attention", "MatMul", "k", "normed", K, N // 2)]
    return model, weights, sites


@pytest.mark.parametrize("extra_reader", [False, True])
def test_smoothing_is_folded_into_the_norm_and_the_fp32_reader_exactly(extra_reader, monkeypatch):
    """The division by the smoothing factors and split divisors moves into the RMSNorm's scale, and
    v_proj (fp32, reading the same norm output) gets its rows multiplied back: no Mul on the
    activation, and every output equals that of the graph with the explicit Mul. Another kind of
    reader of the norm's output (here an Add) keeps the Mul."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, K)).astype(np.float32)
    x[..., 7] *= 8
    smooth = 1 + rng.random(K).astype(np.float32)
    idx = np.array([7, 20])
    cols = I8.split_columns(K, idx, 4)
    outputs, muls = {}, {}
    for folding in (True, False):
        if not folding:
            monkeypatch.setattr(I8, "_fold_divisors", lambda *a, **k: False)
        model, weights, sites = _norm_attention_model(np.random.default_rng(6), extra_reader)
        packed = {s.name: I8.quantize_per_channel((weights[s.name] * smooth[:, None])[cols]) for s in sites}
        I8.add_integer_path(model, "normed", sites, packed, smooth, outliers=idx, split=4)
        muls[folding] = [n.name for n in model.graph.node if n.name.endswith("/smooth")]
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[folding] = session.run(None, {"x": x})
    assert muls[False] == ["normed.int8/smooth"]
    assert muls[True] == (["normed.int8/smooth"] if extra_reader else [])
    for got, want in zip(outputs[True], outputs[False]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _feed_forward_model(rng):
    """gelu(x @ gate) * (x @ up) -> down, as in a Gemma 3 feed-forward (x stands for the normed input)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", K])
    pre = "backbone.layers.0.mlp."
    weights = {pre + "gate_proj.weight_t": rng.normal(size=(K, N)), pre + "up_proj.weight_t": rng.normal(size=(K, N)),
               pre + "down_proj.weight_t": rng.normal(size=(N, K))}
    weights = {n: (v / np.sqrt(v.shape[0])).astype(np.float32) for n, v in weights.items()}
    nodes = [helper.make_node("MatMul", ["x", pre + "gate_proj.weight_t"], ["g"], name="gate"),
             helper.make_node("MatMul", ["x", pre + "up_proj.weight_t"], ["u"], name="up"),
             helper.make_node("Gelu", ["g"], ["a"], name="act"),
             helper.make_node("Mul", ["a", "u"], ["h"], name="product"),
             helper.make_node("MatMul", ["h", pre + "down_proj.weight_t"], ["y"], name="down")]
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    first = [WeightSite(pre + f"{p}_proj.weight_t", "feed_forward", "MatMul", p, "x", K, N) for p in ("gate", "up")]
    down = WeightSite(pre + "down_proj.weight_t", "feed_forward", "MatMul", "down", "h", N, K)
    return model, weights, first, down


@pytest.mark.parametrize("up_static", [True, False])
def test_down_proj_smoothing_is_folded_into_up_proj_scales_exactly(up_static, monkeypatch):
    """down_proj's input is gelu(gate) x up: its smoothing divisors move into up_proj's per-channel
    output scales (after up_proj's per-token row rescale too): no Mul on the product, and the output
    equals that of the graph with the explicit Mul."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 6, K)).astype(np.float32)
    smooth_first, smooth_down = 1 + rng.random(K).astype(np.float32), 1 + 3 * rng.random(N).astype(np.float32)
    outputs, muls, scales = {}, {}, {}
    for folding in (True, False):
        if not folding:
            monkeypatch.setattr(I8, "_integer_factor_scale", lambda *a, **k: None)
        model, weights, first, down = _feed_forward_model(np.random.default_rng(9))
        packed = {s.name: I8.quantize_per_channel(weights[s.name] * smooth_first[:, None]) for s in first}
        I8.add_integer_path(model, "x", first, packed, smooth_first, static_max=4.0 if up_static else None)
        I8.add_integer_path(model, "h", [down], {down.name: I8.quantize_per_channel(weights[down.name] * smooth_down[:, None])},
                            smooth_down)
        onnx.checker.check_model(model)
        muls[folding] = sorted(n.name for n in model.graph.node if n.name.endswith("/smooth"))
        scales[folding] = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == first[1].name + ".scale"))
        outputs[folding] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert muls[False] == ["h.int8/smooth", "x.int8/smooth"]     # x is a graph input: nothing to fold into
    assert muls[True] == ["x.int8/smooth"]
    np.testing.assert_allclose(scales[True], scales[False] / smooth_down, rtol=1e-6)
    np.testing.assert_allclose(outputs[True], outputs[False], rtol=1e-4, atol=1e-4 * np.abs(outputs[False]).max())


def test_per_channel_quantizer_codes_and_scales():
    w = np.array([[1.0, -0.5], [-2.0, 0.25], [0.5, 0.0]], np.float32)   # [K=3, N=2]
    codes, scales = I8.quantize_per_channel(w)
    np.testing.assert_array_equal(scales, np.float32([2.0 / 127, 0.5 / 127]))
    np.testing.assert_array_equal(codes, [[64, -127], [-127, 64], [32, 0]])  # 63.5 rounds to even 64
    assert codes.dtype == np.int8
    zero = I8.quantize_per_channel(np.zeros((4, 3), np.float32))
    assert not zero[0].any() and np.all(zero[1] == 1.0)


def test_smoothing_factors_formula_and_guards():
    act = np.array([4.0, 1.0, 0.0, 1e9], np.float32)
    w = [np.array([[1.0], [4.0], [2.0], [1.0]], np.float32)]
    s = I8.smoothing_factors(act, w, alpha=0.5)
    np.testing.assert_allclose(s[:2], [2.0, 0.5], rtol=1e-6)   # sqrt(max|x|) / sqrt(max|w|)
    assert s[2] == 1.0                                         # a channel that never fired is left alone
    assert s[3] == 1e3                                         # clipped


def test_per_channel_gptq_beats_round_to_nearest_on_correlated_inputs():
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(K, K))
    x = rng.normal(size=(4000, K)) @ mix + 0.1 * rng.normal(size=(4000, K))   # strongly correlated inputs
    h = x.T @ x
    w = rng.normal(size=(N, K)).astype(np.float32)                            # [N_out, K_in]
    scales = I8.per_channel_scales(w.T)
    codes = gptq_quantize_per_channel(w, gptq_factor(h), scales)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    rtn = np.clip(np.rint(w / scales[:, None]), -127, 127)
    err = lambda q: np.linalg.norm(x @ (w - q * scales[:, None]).T)  # noqa: E731
    assert err(codes) < 0.7 * err(rtn), (err(codes), err(rtn))


def _tiny_w8a8(tiny_artifact, out, method: str, target: str) -> tuple[onnx.ModelProto, list[str]]:
    """w8a8 of the tiny model built through the CLI for a fixed target (the build's choices then do not
    depend on the CPU running the test; activation width from its flags, so it runs here), its graph
    and op types."""
    from quant.cli import main

    assert main(["--in", str(tiny_artifact), "--variant", "w8a8", "--out", str(out), "-q", "--threads", "1",
                 "--method", method, "--accuracy-level", "0", "--target", target,
                 "--int8-activation-bits", "auto"]) == 0
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    return model, [n.op_type for n in model.graph.node]


def test_w8a8_on_the_tiny_model(tiny_artifact, tmp_path):
    """Built through the CLI (round-to-nearest weights, calibrated smoothing): q/k/o and gate/up on the
    integer path, v and down fp32, Q8_0 embeddings and heads, and close to fp32."""
    out = tmp_path / "w8a8"
    model, ops = _tiny_w8a8(tiny_artifact, out, "rtn", "x86-vnni")
    layers = 4
    assert ops.count("MatMulIntegerToFloat") == 5 * layers        # q, k, o, gate, up
    assert ops.count("QuantizeLinear") == 3 * layers              # their 3 inputs per layer
    # the smoothing/split divisors are folded into the norms (v_proj's fp32 rows multiplied back);
    # o_proj's input (the attention output) keeps its Mul
    assert sum(n.name.endswith("/smooth") for n in model.graph.node) == layers
    assert ops.count("MatMulNBits") == 0                          # the Q8_0 heads are decoded at load
    heads = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1].startswith("dense_weights.")]
    assert len(heads) == 2
    fp32_matmuls = sorted(n.input[1].split(".")[-2] for n in model.graph.node
                          if n.op_type == "MatMul" and n.input[1].endswith(".weight_t"))
    assert fp32_matmuls == ["down_proj"] * layers + ["v_proj"] * layers
    floats = [i.name for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT]
    assert all(n.endswith(".scales") or I8.keeps_fp32(n) for n in floats), floats
    groups = read_manifest(out)["quantization"]["groups"]
    assert groups["attention"]["format"] == INTEGER_FORMAT
    assert groups["attention"]["tensors"] == 3 * layers and groups["feed_forward"]["tensors"] == 2 * layers
    assert groups["embeddings"]["format"] == "Q8_0" and groups["projection"]["format"] == "Q8_0"
    assert groups["attention"]["fp32_weights"]["which"] == "v_proj"
    assert groups["feed_forward"]["fp32_weights"] == {**groups["feed_forward"]["fp32_weights"], "which": "down_proj",
                                                      "tensors": layers}
    int8 = read_manifest(out)["quantization"]["int8_path"]
    assert int8["activation_bits"] in (7, 8) and int8["needs_int8_dot_products"] == (int8["activation_bits"] == 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Embedder(tiny_artifact, threads=1).encode(TINY_TEXTS)
        got = Embedder(out, threads=1).encode(TINY_TEXTS)
    assert np.sum(ref * got, axis=1).min() >= 0.999     # measured 0.99966


def test_w8a8_for_amx_computes_down_in_two_integer_passes(tiny_artifact, tmp_path):
    """--target x86-amx: down_proj on the integer path too, twice (codes and residual codes, GPTQ weights),
    v_proj still fp32, recorded in the manifest, and close to fp32."""
    out = tmp_path / "w8a8"
    model, ops = _tiny_w8a8(tiny_artifact, out, "gptq", "x86-amx")
    layers = 4
    assert ops.count("MatMulIntegerToFloat") == (5 + 2) * layers   # q, k, o, gate, up; down twice
    assert ops.count("QuantizeLinear") == (4 + 1) * layers         # 4 inputs per layer, down's residual too
    fp32_matmuls = sorted(n.input[1].split(".")[-2] for n in model.graph.node
                          if n.op_type == "MatMul" and n.input[1].endswith(".weight_t"))
    assert fp32_matmuls == ["v_proj"] * layers
    m = read_manifest(out)
    assert m["quantization"]["int8_path"]["two_pass_weights"] == layers
    assert m["quantization"]["int8_path"]["two_pass_choice"] == "target x86-amx"
    groups = m["quantization"]["groups"]
    assert groups["attention"]["tensors"] == 3 * layers and groups["feed_forward"]["tensors"] == 3 * layers
    assert groups["feed_forward"]["two_pass_weights"]["which"] == "down_proj"
    assert groups["feed_forward"]["two_pass_weights"]["tensors"] == layers
    assert groups["attention"]["fp32_weights"]["which"] == "v_proj" and "fp32_weights" not in groups["feed_forward"]
    assert m["target"]["name"] == "x86-amx" and "amx_int8" in m["target"]["cpu_flags"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # built for x86-amx: a warning on CPUs without it, same vectors
        ref = Embedder(tiny_artifact, threads=1).encode(TINY_TEXTS)
        got = Embedder(out, threads=1).encode(TINY_TEXTS)
    assert np.sum(ref * got, axis=1).min() >= 0.999


def test_w8a8_fast_puts_every_projection_on_the_integer_path(tiny_artifact, tmp_path):
    """The static form (``w8a8_fast``): all seven projections per layer on the integer GEMM, one
    calibrated activation scale per input except down_proj's (per token), no fp32 projection left,
    described in the manifest, and close to fp32."""
    from quant.cli import main
    from quant.recipe import STATIC_FORMAT

    out = tmp_path / "fast"
    assert main(["--in", str(tiny_artifact), "--variant", "w8a8_fast", "--out", str(out), "-q", "--threads", "1",
                 "--method", "rtn", "--accuracy-level", "0", "--target", "x86-vnni",
                 "--int8-activation-bits", "auto"]) == 0
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    layers = 4
    assert ops.count("MatMulIntegerToFloat") == 7 * layers          # q, k, v, o, gate, up, down
    assert ops.count("QuantizeLinear") == 4 * layers                # their 4 inputs per layer
    assert ops.count("ReduceMax") == layers                         # per-token codes for down_proj's input only
    # the smoothing divisors fold into the norms and, for down_proj's input, into up_proj's scales;
    # o_proj's input (the attention output) keeps its Mul
    assert sum(n.name.endswith("/smooth") for n in model.graph.node) == layers
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1].endswith(".weight_t")]
    m = read_manifest(out)
    assert m["variant"] == "w8a8_fast" and m["quantization"]["recipe"] == "e8_a8s_f8s_p8"
    groups = m["quantization"]["groups"]
    assert groups["attention"]["format"] == groups["feed_forward"]["format"] == STATIC_FORMAT
    assert groups["attention"]["tensors"] == 4 * layers and groups["feed_forward"]["tensors"] == 3 * layers
    assert "fp32_weights" not in groups["attention"] and "fp32_weights" not in groups["feed_forward"]
    assert "down_proj" in groups["feed_forward"]["per_token_inputs"] and "per_token_inputs" not in groups["attention"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Embedder(tiny_artifact, threads=1).encode(TINY_TEXTS)
        got = Embedder(out, threads=1).encode(TINY_TEXTS)
    assert np.sum(ref * got, axis=1).min() >= 0.99


def test_runtime_refuses_8_bit_codes_on_x86_without_vnni(tmp_path, monkeypatch):
    """An artifact whose integer path needs int8 dot products is refused where they are missing."""
    from runtime import cpu
    from runtime.artifact import ArtifactError

    manifest = {"variant": "w8a8", "quantization": {"int8_path": {"needs_int8_dot_products": True}}}
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: True)
    with pytest.raises(ArtifactError, match="no VNNI.*--target x86-avx2"):
        cpu.check_artifact(tmp_path, manifest)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512_vnni"})
    cpu.check_artifact(tmp_path, manifest)           # VNNI: fine
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: set())
    cpu.check_artifact(tmp_path, manifest)           # Arm: no saturation
    manifest["quantization"]["int8_path"]["needs_int8_dot_products"] = False
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: True)
    cpu.check_artifact(tmp_path, manifest)           # 7-bit codes: fine everywhere


def test_cpu_flags_parsing():
    from runtime.cpu import cpu_flags, has_int8_dot

    info = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    assert {"avx2", "avx512_vnni"} <= cpu_flags(info)
    assert has_int8_dot({"avx2", "avx512_vnni"}) and has_int8_dot({"asimd", "asimddp"})
    assert not has_int8_dot({"avx2", "fma"})


def test_cpu_name_parsing():
    from runtime.cpu import cpu_name

    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n"
    assert cpu_name(info) == "AMD EPYC 9R14"
    fallback = cpu_name("processor\t: 0\n")   # no model name line (e.g. some Arm kernels)
    assert isinstance(fallback, str) and fallback


def test_arm64_flags_come_from_the_kernels_hwcaps(monkeypatch):
    """On Linux arm64 the flags come from getauxval (qemu-user passes the host's /proc/cpuinfo through)."""
    from runtime import cpu

    monkeypatch.setattr(cpu, "machine_arch", lambda machine=None: "aarch64")
    monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
    words = {16: 1 << 0 | 1 << 1 | 1 << 20, 26: 1 << 13}          # fp, asimd, asimddp; i8mm
    monkeypatch.setattr(cpu, "_getauxval", lambda kind: words[kind])
    assert cpu.cpu_flags() == {"fp", "asimd", "asimddp", "i8mm"} and cpu.has_int8_dot()
    words = {16: 1 << 0 | 1 << 1, 26: 0}                           # a Cortex-A53: no dot product
    assert cpu.cpu_flags() == {"fp", "asimd"} and not cpu.has_int8_dot()
