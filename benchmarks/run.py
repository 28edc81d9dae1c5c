"""``python -m benchmarks``: speed, latency, memory, load time and size of EmbeddingGemma systems.

Each (system, workload) measurement runs in a fresh process; rounds interleave the systems
(A B C A B C ...) and the report takes medians, so drift on a busy machine hits every system alike.
Ratios are against the fp32 ONNX artifact and against sentence-transformers on torch, both measured
in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.process import call_worker
from benchmarks.workloads import NAMES as WORKLOADS
from runtime.artifact import ArtifactError, accuracy_levels, read_manifest
from runtime.outputs import OutputExistsError, refuse_existing, write_text_atomic
from runtime.progress import progress_bar

REPEATS = {"short": 5, "medium": 3, "long": 1, "latency": 1}


def _systems(args) -> list[dict]:
    systems = []
    for item in args.artifacts:
        name, _, path = item.partition("=")
        if not path:
            name, path = Path(item).name, item
        try:
            m = read_manifest(path)
        except ArtifactError as exc:
            raise SystemExit(f"error: {name}: {exc}") from None
        level = accuracy_levels(m.get("quantization"))
        systems.append({"name": name, "system": "onnx", "path": str(Path(path).resolve()),
                        "size_mb": sum(f["size"] for f in m["files"].values()) / 1e6,
                        "variant": m.get("variant"), "accuracy_level": level,
                        # MatMulNBits at level 4 multiplies int8-quantized activations on the vector units;
                        # the int8 path (w8a8, w8a8_s4) runs onnxruntime's integer GEMM, which has AMX kernels
                        "arith": ("int8-gemm" if (m.get("quantization") or {}).get("int8_path")
                                  else "int8" if "4" in level else "fp32")})
    if args.torch:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            print("note: sentence-transformers/torch not installed; skipping the torch baseline", file=sys.stderr)
        else:
            size = sum(p.stat().st_size for p in Path(args.torch).rglob("*") if p.is_file()) / 1e6
            systems.append({"name": "torch-fp32", "system": "torch", "path": str(Path(args.torch).resolve()),
                            "size_mb": size, "variant": "sentence-transformers", "accuracy_level": "–"})
    if args.peers is not None:
        from benchmarks.peers import parse_peers, peer_systems

        if not any(s["system"] == "onnx" and s["variant"] == "fp32" for s in systems):
            raise SystemExit("error: --peers needs the fp32 artifact among --artifacts (fidelity is measured against it)")
        try:
            found, skips = peer_systems(parse_peers(args.peers))
        except ValueError as exc:
            raise SystemExit(f"error: --peers: {exc}") from None
        for line in skips:
            print(line, file=sys.stderr)
        systems += found
    if not systems:
        raise SystemExit("error: nothing to measure; pass --artifacts and/or --torch")
    return systems


def _run_one(system: dict, workload, threads: int, repeats: int) -> dict:
    # The texts travel in the spec: loading tokenizer.json in the worker would swamp its peak RSS (docs/notes/bench.md).
    return call_worker(system, {"workload": workload.name, "texts": list(workload.texts),
                                "batch_size": workload.batch_size, "repeats": repeats}, threads)


def summarise(systems, raw, token_counts) -> dict:
    """Medians per system and workload, plus ratios against fp32 ONNX and torch."""
    summary = {}
    for s in systems:
        per = {}
        for w, runs in raw[s["name"]].items():
            times = [t for r in runs for t in r["times"]]
            entry = {"peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                     "load_s": statistics.median(r["load_s"] for r in runs)}
            if w == "latency":
                ms = sorted(1000 * t for t in times)
                entry.update(p50_ms=statistics.median(ms), p95_ms=ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))])
            else:
                t = statistics.median(times)
                entry.update(seconds=t, texts_per_s=token_counts[w]["texts"] / t, tokens_per_s=token_counts[w]["tokens"] / t,
                             # The best repeat (least-disturbed moment) is steadier than the median on a
                             # host whose speed changes (docs/notes/bench.md); reported beside it.
                             best_tokens_per_s=token_counts[w]["tokens"] / min(times))
            per[w] = entry
        summary[s["name"]] = {"system": s["system"], "variant": s["variant"], "path": s["path"], "size_mb": s["size_mb"],
                              "accuracy_level": s.get("accuracy_level", "–"), "workloads": per}
    fp32 = next((s["name"] for s in systems if s["system"] == "onnx" and s["variant"] == "fp32"), None)
    torch_name = next((s["name"] for s in systems if s["system"] == "torch"), None)
    for entry in summary.values():
        for w, e in entry["workloads"].items():
            for ref, key in ((fp32, "vs_fp32_onnx"), (torch_name, "vs_torch")):
                if ref and "tokens_per_s" in e:
                    e[key] = e["tokens_per_s"] / summary[ref]["workloads"][w]["tokens_per_s"]
                    e["best_" + key] = e["best_tokens_per_s"] / summary[ref]["workloads"][w]["best_tokens_per_s"]
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="example:\n  python -m benchmarks --artifacts fp32=artifacts/fp32 q4_0=artifacts/q4_0 "
               "--torch ~/.cache/embeddinggemma-300m --out bench-results")
    parser.add_argument("--artifacts", nargs="*", default=[], metavar="NAME=DIR", help="artifact folders to measure")
    parser.add_argument("--torch", metavar="CHECKPOINT", help="also measure sentence-transformers on torch (fp32)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads per system (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are taken (default 3)")
    parser.add_argument("--repeats", type=int, help="timed repeats per process (default: short 5, medium 3, long 1)")
    parser.add_argument("--fidelity", metavar="JSON", help="output of `python -m quant.fidelity --json`: decides which "
                        "variants meet their fidelity target for the speed verdicts")
    parser.add_argument("--peers", nargs="*", metavar="PEER[:VARIANT,...]",
                        help="also measure the peers (llama.cpp, st-onnx; all when none named) and their fidelity; "
                             "each is skipped with a note when not set up (scripts/setup-peers.sh)")
    parser.add_argument("--cpu-ghz", type=float, help="the core clock for the peak (default: measured, else lscpu)")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and results.png")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds files (each is replaced once its new version is complete)")
    return parser


def _build_workloads(systems: list[dict], torch_path: str | None, workloads: list[str]):
    """The named workloads, cut with the first tokenizer.json among the systems, and their text and token counts."""
    from benchmarks.workloads import build_workloads, tokenizer_json_of

    onnx_paths = [s["path"] for s in systems if s["system"] == "onnx"]
    built = build_workloads(tokenizer_json_of(onnx_paths + ([torch_path] if torch_path else [])), workloads)
    lengths = {w: built[w].token_counts for w in workloads}
    token_counts = {w: {"texts": len(built[w].texts), "tokens": sum(lengths[w])} for w in workloads}
    fp32 = next((s["path"] for s in systems if s["system"] == "onnx" and s["variant"] == "fp32"), None)
    if fp32:   # the useful arithmetic of each workload, for the fraction of the machine's peak
        from benchmarks.ceiling import model_shape, text_flops

        shape = model_shape(fp32)
        for w in workloads:
            token_counts[w]["gflop"] = sum(text_flops(shape, n) for n in lengths[w]) / 1e9
    return built, token_counts


def _measure(systems: list[dict], workloads: list[str], built: dict, args) -> dict:
    """{system: {workload: [one fresh process's measurement per round]}}, rounds interleaving the systems."""
    raw = {s["name"]: {w: [] for w in workloads} for s in systems}
    jobs = [(r, w, s) for r in range(args.rounds) for w in workloads for s in systems]
    with progress_bar(len(jobs), "measuring", unit="run") as bar:
        for _round, w, s in jobs:
            raw[s["name"]][w].append(_run_one(s, built[w], args.threads, args.repeats or REPEATS[w]))
            bar.update()
    return raw


def _fidelity(systems: list[dict], args) -> dict:
    """Cosines to fp32 on the parity texts, in the format of ``python -m quant.fidelity --json``: taken from
    --fidelity where it has them (a run's fidelity.json has the peers' too), else measured here (with --peers)."""
    out = json.loads(Path(args.fidelity).read_text(encoding="utf-8")) if args.fidelity else {}
    if args.peers is None:
        return out
    from benchmarks.peers import fidelity as peer_fidelity
    from quant.fidelity import load_texts, measure

    ref = next(s for s in systems if s["system"] == "onnx" and s["variant"] == "fp32")
    fp32 = ref["path"]
    texts = load_texts()
    print(f"measuring fidelity on {len(texts)} parity texts (document and query prompts)", file=sys.stderr)
    ours = [s["path"] for s in systems if s["system"] == "onnx" and s is not ref]
    if ours and not args.fidelity:
        out.update(measure(fp32, ours, texts, threads=args.threads))
    peers = [s for s in systems if s["system"] in ("llama.cpp", "st-onnx") and s["name"] not in out]
    if peers:
        # one thread: untimed, and llama.cpp's thread barriers stall on a host whose cores other jobs share
        out.update(peer_fidelity(peers, fp32, texts, 1))
    return out


def _ceiling(summary: dict, systems: list[dict], token_counts: dict, args) -> dict | None:
    """The machine's peak for the run's threads, and each row's achieved rate against it (in ``summary``)."""
    from benchmarks.ceiling import machine_peak

    peak = machine_peak(cores=min(args.threads, os.cpu_count() or args.threads), ghz=args.cpu_ghz)
    if peak is None or not all("gflop" in c for c in token_counts.values()):
        return None
    arith = {s["name"]: s.get("arith", "fp32") for s in systems}
    for name, entry in summary.items():
        entry["arith"] = arith[name]
        for w, e in entry["workloads"].items():
            if "seconds" in e:
                e["gflops"] = token_counts[w]["gflop"] / e["seconds"]
                e["of_fp32_peak"] = e["gflops"] / peak.fp32_gflops
                if arith[name] in ("int8", "int8-gemm"):
                    e["of_int8_peak"] = e["gflops"] / peak.int8_gops
                if arith[name] == "int8-gemm" and peak.int8_matrix_gops:
                    e["of_matrix_peak"] = e["gflops"] / peak.int8_matrix_gops
    return {"cores": peak.cores, "ghz": peak.ghz, "clock_source": peak.clock_source,
            "fp32_per_cycle": peak.fp32_per_cycle, "int8_per_cycle": peak.int8_per_cycle,
            "int8_matrix_per_cycle": peak.int8_matrix_per_cycle, "fp32_gflops": peak.fp32_gflops,
            "int8_gops": peak.int8_gops, "int8_matrix_gops": peak.int8_matrix_gops, "assumption": peak.assumption}


def main(argv=None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    try:   # before any measuring: a run takes up to an hour
        refuse_existing(args.out, args.force, empty_ok=True)
    except OutputExistsError as exc:
        parser.error(str(exc))
    systems = _systems(args)
    built, token_counts = _build_workloads(systems, args.torch, workloads)
    started = time.time()
    fidelity_raw = _fidelity(systems, args)
    raw = _measure(systems, workloads, built, args)

    from benchmarks.report import write_report
    from benchmarks.targets import check, load_fidelity
    from runtime.cpu import INT8_DOT_FLAGS, cpu_flags, cpu_name

    summary = summarise(systems, raw, token_counts)
    ceiling = _ceiling(summary, systems, token_counts, args)
    if fidelity_raw:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "fidelity.json", json.dumps(fidelity_raw, indent=2))
    fidelity = load_fidelity(fidelity_raw, summary)
    flags = cpu_flags()
    meta = {"threads": args.threads, "rounds": args.rounds, "cpu": cpu_name(), "seconds": time.time() - started,
            "cpu_features": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "f16c", *INT8_DOT_FLAGS)),
            "fidelity": fidelity, "targets": check(summary, fidelity), "ceiling": ceiling,
            "workloads": {w: dict(token_counts[w], description=built[w].description) for w in workloads},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = write_report(Path(args.out), meta, summary, raw)
    print(out.read_text())
    return 0
