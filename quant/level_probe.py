"""Pick MatMulNBits' ``accuracy_level`` by timing both levels on this CPU.

Which level is faster is not a property of the instruction set alone: on one AVX-512 VNNI machine
level 4 (int8 activation blocks, integer dot products) made Q4_0 1.16x fp32 and level 0 1.08x; on
another VNNI machine level 4 made Q4_0 *slower* than fp32 (0.80x) and level 0 made it 1.13x, while
Q8_0 was faster at level 4 on both (NOTES-quant.md). So ``--accuracy-level auto`` times the two
candidate levels, per bit width, on a small graph with the model's own feed-forward shapes and the
short workload's row count, and keeps the faster one. It takes a few seconds per bit width.

Needs onnx, onnxruntime and numpy only.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import formats as F
from .graph import MS_DOMAIN, MS_OPSET

#: Levels compared: 0 decodes the weights to fp32 and multiplies in fp32; 4 quantizes each
#: activation block of 32 to int8 and uses integer dot products. (1-3 are fp32/fp16/bf16 compute
#: variants that onnxruntime's CPU kernels treat like 0.)
CANDIDATE_LEVELS = (0, 4)
#: Rows per product: 64 texts of ~32 tokens, the short workload every speed target is stated on.
PROBE_ROWS = 2048
#: EmbeddingGemma's feed-forward shapes (hidden 768, intermediate 1152): most of its matmul work.
PROBE_SHAPES = ((768, 1152), (1152, 768))
#: Timed rounds per level, interleaved (A B A B ...) so a noisy neighbour hits both levels alike.
PROBE_ROUNDS = 7


def _probe_model(bits: int | None, level: int, rng: np.random.Generator) -> bytes:
    """A chain of MatMulNBits nodes with random Q{bits}_0 weights in the model's shapes (plain fp32
    MatMul nodes when ``bits`` is None, for reference)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    name_in = "x"
    for i, (k, n) in enumerate(PROBE_SHAPES):
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
        name_out = "y" if i == len(PROBE_SHAPES) - 1 else f"h{i}"
        if bits is None:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"W{i}"))
            nodes.append(helper.make_node("MatMul", [name_in, f"W{i}"], [name_out], name=f"mm{i}"))
        else:
            q, d = F.quantizer(bits)(w)
            data, scales = F.to_matmulnbits(q, d, bits)
            inits += [numpy_helper.from_array(data, f"B{i}"), numpy_helper.from_array(scales, f"S{i}")]
            nodes.append(helper.make_node("MatMulNBits", [name_in, f"B{i}", f"S{i}"], [name_out], name=f"mm{i}",
                                          domain=MS_DOMAIN, **F.matmulnbits_attributes(n, k, bits, level)))
        name_in = name_out
    graph = helper.make_graph(
        nodes, "accuracy_level_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, PROBE_SHAPES[0][0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, PROBE_SHAPES[-1][1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS_DOMAIN, MS_OPSET)])
    return model.SerializeToString()


def time_levels(bits: int, threads: int | None = None, rounds: int = PROBE_ROUNDS,
                levels: tuple[int, ...] = CANDIDATE_LEVELS) -> dict[int | str, float]:
    """Median seconds per probe run for each of ``levels`` at ``bits`` (4 or 8) on this CPU, and
    for the same products in fp32 (key ``"fp32"``)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    x = rng.standard_normal((PROBE_ROWS, PROBE_SHAPES[0][0])).astype(np.float32)
    sessions = {}
    for level in (*levels, "fp32"):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        model = _probe_model(None if level == "fp32" else bits, 0 if level == "fp32" else level, rng)
        sessions[level] = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        sessions[level].run(None, {"x": x})   # warm-up: pre-packing, thread pool
    times: dict[int | str, list[float]] = {level: [] for level in sessions}
    for _ in range(rounds):
        for level in sessions:
            t0 = time.perf_counter()
            sessions[level].run(None, {"x": x})
            times[level].append(time.perf_counter() - t0)
    return {level: statistics.median(ts) for level, ts in times.items()}


def choose_level(bits: int, threads: int | None = None) -> tuple[int, str]:
    """The faster MatMulNBits accuracy_level for ``bits`` on this CPU, and a note for the manifest."""
    timed = time_levels(bits, threads)
    fp32 = timed.pop("fp32")
    best = min(timed, key=timed.get)
    shapes = " -> ".join(str(k) for k, _ in PROBE_SHAPES) + f" -> {PROBE_SHAPES[-1][1]}"
    detail = ", ".join(f"level {lv} {t * 1e3:.1f} ms" for lv, t in sorted(timed.items()))
    detail += f"; fp32 MatMul {fp32 * 1e3:.1f} ms"
    return best, (f"auto: {best}, timed on the building CPU ({PROBE_ROWS} rows x {shapes}, Q{bits}_0, "
                  f"median of {PROBE_ROUNDS}: {detail})")
