"""Where an artifact's time goes: onnxruntime's per-op profile of one workload, and the matmuls' rate
against the machine's peak.

``python -m benchmarks.profile --artifacts fp32=DIR q4_0=DIR --workload short`` prints, per artifact,
kernel time per op type per encode, its share, and for the matrix products the GFLOP/s they reach
(padding included: this is the work the kernels do) and their share of the fp32 / int8 peak.
Profiling adds overhead: compare within one table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks.ceiling import share_text
from runtime.outputs import add_json_option, claim_json_option, write_text_atomic

#: Ops that multiply matrices; their FLOPs are 2 x M x K x N from the profiled shapes.
MATMUL_OPS = ("MatMul", "MatMulNBits", "MatMulIntegerToFloat", "FusedMatMul", "MatMulInteger", "Gemm")


def _dims(entry) -> list[int]:
    return [int(d) for d in next(iter(entry.values()))] if isinstance(entry, dict) and entry else []


def node_flops(op: str, args: dict) -> float:
    """FLOPs of one profiled matrix-product node: 2 x (output elements) x K, K from the first input."""
    if op not in MATMUL_OPS:
        return 0.0
    inputs, outputs = args.get("input_type_shape") or [], args.get("output_type_shape") or []
    a, out = (_dims(inputs[0]) if inputs else []), (_dims(outputs[0]) if outputs else [])
    if not a or not out:
        return 0.0
    elements = 1
    for d in out:
        elements *= d
    return 2.0 * elements * a[-1]


def summarise_profile(events: list[dict], repeats: int) -> dict[str, dict]:
    """``{op: {"ms", "gflop"}}`` per encode from onnxruntime profile events."""
    out: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "gflop": 0.0})
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        out[op]["ms"] += e["dur"] / 1000 / repeats
        out[op]["gflop"] += node_flops(op, e.get("args", {})) / 1e9 / repeats
    return dict(out)


def profile(path: str, texts: list[str], batch_size: int, threads: int, repeats: int) -> dict[str, dict]:
    """Profile ``repeats`` encodes of ``texts`` with the runtime's own session options."""
    from runtime import Embedder
    from runtime.embedder import runtime_session_options

    with tempfile.TemporaryDirectory() as tmp:
        options = runtime_session_options(threads, low_memory=True)
        emb = Embedder(path, threads=threads, verify=False, session_options=options)
        emb.encode(texts[:8], batch_size=batch_size)   # warm-up outside the profile
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        emb = Embedder(path, threads=threads, verify=False, session_options=options)
        for _ in range(repeats + 1):
            emb.encode(texts, batch_size=batch_size)
        events = json.loads(Path(emb._session.end_profiling()).read_text())
    # the first encode is the warm-up of this session: drop its events
    return summarise_profile(last_encodes(events, repeats + 1, repeats), repeats)


def last_encodes(events: list[dict], encodes: int, keep: int) -> list[dict]:
    """The events of the last ``keep`` of ``encodes`` equal encodes. One encode may be several model
    runs (the runtime's length batches), the same number each time."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    per_encode = len(runs) // encodes
    if per_encode == 0 or keep >= encodes:
        return events
    start = runs[(encodes - keep) * per_encode]
    return [e for e in events if e.get("ts", 0) >= start]


def _table(name: str, ops: dict[str, dict], peak, int8: bool) -> str:
    total = sum(o["ms"] for o in ops.values())
    lines = [f"### {name}: {total:.0f} ms of kernel time per encode", "",
             "| op | ms | share | GFLOP/s | share of peak |", "|---|---|---|---|---|"]
    for op, o in sorted(ops.items(), key=lambda kv: -kv[1]["ms"])[:12]:
        rate = o["gflop"] / (o["ms"] / 1000) if o["gflop"] and o["ms"] else None
        share = ""
        if rate and peak:
            gemm = op in ("MatMulIntegerToFloat", "MatMulInteger")   # onnxruntime's integer GEMM: AMX where present
            if gemm and peak.int8_matrix_gops:
                share = share_text(int8=rate / peak.int8_gops, matrix=rate / peak.int8_matrix_gops)
            elif gemm or (op == "MatMulNBits" and int8):
                share = share_text(int8=rate / peak.int8_gops)
            else:
                share = share_text(fp32=rate / peak.fp32_gflops)
        lines.append(f"| {op} | {o['ms']:.1f} | {100 * o['ms'] / total:.0f} % | "
                     f"{'' if rate is None else f'{rate:.0f}'} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the per-op profile of each artifact on one workload."""
    from benchmarks.ceiling import machine_peak
    from benchmarks.workloads import NAMES, build_workloads, tokenizer_json_of
    from runtime.artifact import accuracy_levels, read_manifest

    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", nargs="+", required=True, metavar="NAME=DIR")
    parser.add_argument("--workload", default="short", choices=[n for n in NAMES if n != "latency"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_option(parser, "also write the profiles here")
    args = parser.parse_args(argv)
    claim_json_option(parser, args)
    items = [(a.partition("=")[0], a.partition("=")[2] or a) for a in args.artifacts]
    work = build_workloads(tokenizer_json_of(path for _, path in items), [args.workload])[args.workload]
    peak = machine_peak(cores=args.threads)
    out = {}
    for name, path in items:
        m = read_manifest(path)
        int8 = "4" in accuracy_levels(m.get("quantization"))   # MatMulNBits multiplies int8 at level 4
        out[name] = profile(path, list(work.texts), work.batch_size, args.threads, args.repeats)
        print(_table(name, out[name], peak, int8) + "\n")
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
