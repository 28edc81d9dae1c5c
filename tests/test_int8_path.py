"""The integer path (w8a8): graph rewrite numerics against a numpy model of the same arithmetic,
the two-pass residual, per-channel GPTQ and smoothing factors, and the tiny-model variant."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant import int8_path as I8
from quant.calibrate import gptq_factor, gptq_quantize_per_channel
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


def _numpy_integer_path(x, codes, scales, smooth, two_pass, bits=8):
    """The arithmetic quant.int8_path documents, in float64: rows scaled to [-1, 1], fixed symmetric codes."""
    half = 2 ** (bits - 1) - 1
    step = np.float32(1.0 / half)
    xs = x / smooth
    rowmax = np.maximum(np.abs(xs).max(axis=-1, keepdims=True), 1e-30)
    unit = xs / rowmax
    q = _quantize(unit, step, half + 1)
    acc = ((q - half - 1) @ codes.astype(np.float64)) * step
    if two_pass:
        step2 = np.float32(step / (2 * half))
        q2 = _quantize(unit - (q - half - 1) * step, step2, half + 1)
        acc = acc + ((q2 - half - 1) @ codes.astype(np.float64)) * step2
    return acc * scales * rowmax


@pytest.mark.parametrize("bits", I8.ACTIVATION_BITS)
@pytest.mark.parametrize("two_pass", [False, True])
def test_rewrite_matches_the_arithmetic_it_claims(two_pass, bits):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[0, 1] *= 40          # a token 40x larger than the rest: the per-token scale must absorb it
    x[..., 3] *= 10        # an outlier channel: the smoothing factors must absorb it
    name = "backbone.layers.0.mlp." + ("down_proj" if two_pass else "up_proj") + ".weight_t"
    assert I8.is_eligible(name) and I8.is_two_pass(name) == two_pass
    smooth = I8.smoothing_factors(np.abs(x).reshape(-1, K).max(0), [w])
    codes, scales = I8.quantize_per_channel(w * smooth[:, None])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, smooth, activation_bits=bits)
    onnx.checker.check_model(model)
    assert not [i for i in model.graph.initializer if i.name == name], "the fp32 weight must be gone"
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == (2 if two_pass else 1) and "MatMul" not in ops
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = _numpy_integer_path(x.astype(np.float64), codes, scales, smooth.astype(np.float64), two_pass, bits)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # and it is an accurate product: the error against the fp32 matmul is small, smaller with two passes
    exact = x @ w
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert rel < (0.006 if two_pass else 0.02 * 2 ** (8 - bits)), rel
    # codes stay within the declared width (7 bits: every u8 x s8 pair sum fits int16)
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) == (2 if two_pass else 1)


@pytest.mark.parametrize("two_pass", [False, True])
def test_split_outlier_channels_keep_the_product_and_the_other_channels_precision(two_pass):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[:, 0, [5, 17]] *= 12      # a sink-like token: two channels far above the rest
    name = "backbone.layers.0.mlp." + ("down_proj" if two_pass else "up_proj") + ".weight_t"
    smooth = np.ones(K, np.float32)   # as for down_proj's input; smoothing would absorb part of the outliers
    idx = I8.outlier_channels(np.abs(x).reshape(-1, K).max(0) / smooth, 2)
    np.testing.assert_array_equal(idx, [5, 17])
    cols = I8.split_columns(K, idx, 4)
    assert cols.tolist() == list(range(K)) + [5, 17] * 3
    codes, scales = I8.quantize_per_channel((w * smooth[:, None])[cols])
    model = _one_matmul_model(w, name)
    site = WeightSite(name, "feed_forward", "MatMul", "mm", "x", K, N)
    I8.add_integer_path(model, "x", [site], {name: (codes, scales)}, smooth, outliers=idx, split=4)
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # reference: each outlier channel fed as 4 copies of x / (4 s), each reading the row W s
    widened = (x.astype(np.float64) / I8.input_divisors(smooth, idx, 4))[..., cols]
    want = _numpy_integer_path(widened, codes, scales, np.ones(len(cols)), two_pass)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    # with exact activations the widened product is the original one (copies sum back) ...
    wide_exact = widened @ (w * smooth[:, None]).astype(np.float64)[cols]
    np.testing.assert_allclose(wide_exact, x.astype(np.float64) @ w, rtol=1e-6, atol=1e-4)
    # ... and the sink token's activation codes lose less (error against each path's own weights)
    plain_codes, plain_scales = I8.quantize_per_channel(w * smooth[:, None])
    plain = _numpy_integer_path(x.astype(np.float64), plain_codes, plain_scales, smooth.astype(np.float64), two_pass)
    ref_plain = (x / smooth) @ (plain_codes * plain_scales.astype(np.float64))
    ref_wide = widened @ (codes * scales.astype(np.float64))
    err = lambda y, r: np.linalg.norm(y[:, 0] - r[:, 0]) / np.linalg.norm(r[:, 0])  # noqa: E731
    if not two_pass:
        assert err(got, ref_wide) < err(plain, ref_plain) / 2, (err(got, ref_wide), err(plain, ref_plain))


def test_two_pass_input_is_far_more_accurate_than_one():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(K, N)).astype(np.float32)
    x = rng.standard_t(3, size=(4, 7, K)).astype(np.float32)   # heavy tails, like down_proj's input
    smooth = np.ones(K, np.float32)
    codes, scales = I8.quantize_per_channel(w)
    wq = codes.astype(np.float64) * scales
    exact = x.astype(np.float64) @ wq          # isolate the activation error: same (quantized) weights
    errs = [np.linalg.norm(_numpy_integer_path(x, codes, scales, smooth, tp) - exact) / np.linalg.norm(exact)
            for tp in (False, True)]
    assert errs[1] < errs[0] / 50, errs


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


def test_w8a8_on_the_tiny_model(tiny_artifact, tmp_path):
    """Built through the CLI (round-to-nearest weights, calibrated smoothing): every eligible matmul on
    the integer path, the two-pass ones doubled, Q8_0 embeddings and heads, and close to fp32."""
    from quant.cli import main

    out = tmp_path / "w8a8"
    assert main(["--in", str(tiny_artifact), "--variant", "w8a8", "--out", str(out), "-q", "--threads", "1"]) == 0
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    layers = 4
    assert ops.count("MatMulIntegerToFloat") == 9 * layers        # 7 weights + the residual pass of v and down
    assert ops.count("QuantizeLinear") == 6 * layers              # 4 inputs per layer, 2 of them twice
    assert ops.count("MatMulNBits") == 2 and "MatMul" in ops      # the heads; attention scores stay fp32
    floats = [i.name for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT]
    assert all(n.endswith(".scales") for n in floats), floats
    groups = read_manifest(out)["quantization"]["groups"]
    assert groups["attention"]["format"] == INTEGER_FORMAT
    assert groups["attention"]["tensors"] == 4 * layers and groups["feed_forward"]["tensors"] == 3 * layers
    assert groups["embeddings"]["format"] == "Q8_0" and groups["projection"]["format"] == "Q8_0"
    assert groups["feed_forward"]["two_pass_inputs"] == "down_proj"
    int8 = read_manifest(out)["quantization"]["int8_path"]
    assert int8["activation_bits"] in (7, 8) and int8["needs_int8_dot_products"] == (int8["activation_bits"] == 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Embedder(tiny_artifact, threads=1).encode(TINY_TEXTS)
        got = Embedder(out, threads=1).encode(TINY_TEXTS)
    assert np.sum(ref * got, axis=1).min() >= 0.999     # measured 0.99966


def test_runtime_refuses_8_bit_codes_on_x86_without_vnni(tmp_path, monkeypatch):
    """An artifact whose integer path needs int8 dot products is refused where they are missing."""
    from runtime import cpu, embedder
    from runtime.artifact import ArtifactError

    manifest = {"variant": "w8a8", "quantization": {"int8_path": {"needs_int8_dot_products": True}}}
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: True)
    with pytest.raises(ArtifactError, match="no VNNI.*--int8-activation-bits 7"):
        embedder._check_cpu_can_run(tmp_path, manifest)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512_vnni"})
    embedder._check_cpu_can_run(tmp_path, manifest)           # VNNI: fine
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda cpuinfo=None: set())
    embedder._check_cpu_can_run(tmp_path, manifest)           # Arm: no saturation
    manifest["quantization"]["int8_path"]["needs_int8_dot_products"] = False
    monkeypatch.setattr(cpu, "is_x86", lambda machine=None: True)
    embedder._check_cpu_can_run(tmp_path, manifest)           # 7-bit codes: fine everywhere


def test_cpu_flags_parsing():
    from runtime.cpu import cpu_flags, has_int8_dot

    info = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
    assert {"avx2", "avx512_vnni"} <= cpu_flags(info)
    assert has_int8_dot({"avx2", "avx512_vnni"}) and has_int8_dot({"asimd", "asimddp"})
    assert not has_int8_dot({"avx2", "fma"})
