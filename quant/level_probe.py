"""Pick MatMulNBits' ``accuracy_level`` by timing the built model at levels 0 and 4 on this CPU.

Which level is faster is not a property of the instruction set alone, and a small graph does not
tell either (docs/notes/quant.md has the measurements on several CPUs). So ``--accuracy-level auto``
times the artifact itself with the graph at level 0 and at level 4, interleaved, on the two shapes
users run: a batch of 32 texts x 32 tokens (about what the runtime's padding split makes of 64
short texts) and one text of 16 tokens (a search box). Both count: at level 0 onnxruntime has no
fp32-compute kernel for 8-bit blocks and decodes every weight on every call, which makes single
texts several times slower while batches may be faster.

Level 4 is not free: its int8 activation blocks are a second rounding on top of the weights' (for
Q8_0 most of the error). So level 4 must beat level 0 by ``LEVEL4_MIN_GAIN`` (geometric mean of the
two shapes' speed-ups).

Needs onnx, onnxruntime and numpy only.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from .formats import matmulnbits_format

#: Levels compared: 0 decodes the weights to fp32 and multiplies in fp32; 4 quantizes each
#: activation block of 32 to int8 and uses integer dot products. (1-3 are fp32/fp16/bf16 compute
#: variants that onnxruntime's CPU kernels treat like 0.)
CANDIDATE_LEVELS = (0, 4)
#: Timed inputs, texts x tokens: a batch (about what the runtime's padding split makes of 64 short
#: texts) and a single search-box query.
PROBE_SHAPES = {"batch": (32, 32), "single": (1, 16)}
#: Timed rounds per level and shape, interleaved (A B B A ...) so a noisy neighbour hits both alike.
PROBE_ROUNDS = 3
#: How much faster level 4 must be than level 0 (geometric mean over ``PROBE_SHAPES`` of the time
#: ratios) to be chosen: it costs accuracy, and paired rounds of the same model differ by a few per cent.
LEVEL4_MIN_GAIN = 1.05


def pick_level(timed: dict[int, dict[str, float]], min_gain: float = LEVEL4_MIN_GAIN) -> int:
    """Level 0 (fp32 activations) unless level 4's speed-up over it, the geometric mean over the
    timed shapes of level-0 time / level-4 time, is at least ``min_gain``."""
    ratios = [timed[0][shape] / timed[4][shape] for shape in timed[0]]
    return 4 if float(np.exp(np.mean(np.log(ratios)))) >= min_gain else 0


def node_bits(node: onnx.NodeProto) -> int:
    """The ``bits`` attribute of a MatMulNBits node (4 when absent, onnxruntime's default)."""
    return next((a.i for a in node.attribute if a.name == "bits"), 4)


def set_level(model: onnx.ModelProto, level: int, bits: int | None = None) -> int:
    """Set ``accuracy_level`` on every MatMulNBits node of ``model`` (of ``bits`` only, when given)
    in place; returns how many."""
    from onnx import helper

    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and (bits is None or node_bits(node) == bits):
            attr = next((a for a in node.attribute if a.name == "accuracy_level"), None)
            if attr is None:
                node.attribute.append(helper.make_attribute("accuracy_level", level))
            else:
                attr.i = level   # in place: the graph stays byte-identical to one built at this level
            count += 1
    return count


def time_levels(model_path: str | Path, vocab: int, threads: int | None = None, rounds: int = PROBE_ROUNDS,
                levels: tuple[int, ...] = CANDIDATE_LEVELS, bits: int | None = None,
                fixed: dict[int, int] | None = None, config: dict[str, str] | None = None) -> dict[int, dict[str, float]]:
    """Median seconds per run, ``{level: {shape: s}}``, of the model at ``model_path`` (graph with
    external data) with its MatMulNBits nodes (those of ``bits`` only, when given; the others at
    ``fixed[their bits]``) at each of ``levels``, on random tokens (ids below ``vocab``) in each of
    ``PROBE_SHAPES``. Each level's graph is loaded from memory, its weights from the file beside
    ``model_path`` (as calibration loads its edited graph), with the runtime's session options and
    the graph's session ``config`` entries (``quant.manifest.session_config_for``)."""
    import onnxruntime as ort

    from runtime.embedder import runtime_session_options

    path = Path(model_path)
    graph = onnx.load(str(path), load_external_data=False)
    for other, level in (fixed or {}).items():
        set_level(graph, level, other)
    rng = np.random.default_rng(0)
    feeds = {}
    for shape, dims in PROBE_SHAPES.items():
        ids = rng.integers(3, vocab, size=dims, dtype=np.int64)
        feeds[shape] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    sessions = {}
    try:
        for level in levels:
            set_level(graph, level, bits)
            opts = runtime_session_options(threads, config=config)
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
            sessions[level] = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            sessions[level].run(None, feeds["single"])   # warm-up (thread pool, first allocations), cheap
        times = {level: {shape: [] for shape in feeds} for level in sessions}
        for r in range(rounds):
            for level in (levels if r % 2 == 0 else tuple(reversed(levels))):
                for shape, feed in feeds.items():
                    t0 = time.perf_counter()
                    sessions[level].run(None, feed)
                    times[level][shape].append(time.perf_counter() - t0)
    finally:
        sessions.clear()
    return {level: {shape: statistics.median(ts) for shape, ts in by_shape.items()}
            for level, by_shape in times.items()}


def choose_levels(model_path: str | Path, vocab: int, threads: int | None = None,
                  config: dict[str, str] | None = None) -> tuple[dict[int, int], dict[str, str]]:
    """MatMulNBits accuracy_level per bit width of the model at ``model_path`` on this CPU, and a note
    per bit width for the manifest: ``pick_level`` on ``time_levels`` of that bit width's nodes, the
    widest first, the others at level 0 or at what was chosen for them already (a mixed variant such
    as e4_a8_f4_p4 may want level 4 for its Q8_0 nodes and level 0 for its Q4_0 nodes). ``config``:
    the graph's session config entries, as ``time_levels`` takes them."""
    graph = onnx.load(str(model_path), load_external_data=False)
    widths = sorted({node_bits(n) for n in graph.graph.node if n.op_type == "MatMulNBits"}, reverse=True)
    del graph
    levels = {b: 0 for b in widths}
    notes = {}
    shapes = " and ".join(f"{shape} {b} x {t}" for shape, (b, t) in PROBE_SHAPES.items())
    for bits in widths:
        timed = time_levels(model_path, vocab, threads, bits=bits, fixed={b: lv for b, lv in levels.items() if b != bits},
                            config=config)
        levels[bits] = pick_level(timed)
        detail = "; ".join(f"level {lv}: " + ", ".join(f"{shape} {t * 1e3:.1f} ms" for shape, t in by_shape.items())
                           for lv, by_shape in sorted(timed.items()))
        name = matmulnbits_format(bits).name
        notes[name] = (f"auto: {levels[bits]}, the built model timed on the building CPU with its {name} "
                               f"MatMulNBits at each level (texts x tokens: {shapes}; median of {PROBE_ROUNDS}: "
                               f"{detail}); level 4 only if >= {LEVEL4_MIN_GAIN:g}x faster (geometric mean), its "
                               f"int8 activations cost accuracy")
    return levels, notes
