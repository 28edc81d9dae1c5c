"""Write benchmark results as JSON, a Markdown table and a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ceiling import share_text
from runtime.outputs import replaced_atomically, write_text_atomic


def write_report(out: Path, meta: dict, summary: dict, raw: dict) -> Path:
    """Write results.json, results.md and results.png into ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps({"meta": meta, "summary": summary, "raw": raw}, indent=2))
    md = out / "results.md"
    write_text_atomic(md, _markdown(meta, summary))
    with replaced_atomically(out / "results.png") as tmp:
        _plot(tmp, meta, summary)
    return md


def _ratios(*xs) -> str:
    """" (1.86×, 2.40×)" of the ratios there are (none when torch or fp32 was not measured)."""
    got = [f"{x:.2f}×" for x in xs if x is not None]
    return f" ({', '.join(got)})" if got else ""


def _markdown(meta: dict, summary: dict) -> str:
    features = ", ".join(meta.get("cpu_features") or []) or "unknown"
    lines = [f"# Benchmark ({meta['time']})", "",
             f"{meta['cpu']} ({features}), {meta['threads']} threads, {meta['rounds']} interleaved rounds, medians; "
             "each measurement in a fresh process.", ""]
    for w, info in meta["workloads"].items():
        lines.append(f"- **{w}**: {info['description']} ({info['tokens']} tokens in {info['texts']} texts)")
    lines.append("")
    through = [w for w in meta["workloads"] if w != "latency"]
    header = ["system", "size MB"] + [f"{w} tok/s (×fp32, ×torch)" for w in through]
    if "latency" in meta["workloads"]:
        header += ["latency p50 / p95 ms"]
    header += ["peak RSS MB (short)" if "short" in meta["workloads"] else "peak RSS MB", "load s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        ws = entry["workloads"]
        row = [name, f"{entry['size_mb']:.0f}"]
        for w in through:
            e = ws[w]
            row.append(f"{e['tokens_per_s']:.0f}{_ratios(e.get('vs_fp32_onnx'), e.get('vs_torch'))}")
        if "latency" in ws:
            row.append(f"{ws['latency']['p50_ms']:.1f} / {ws['latency']['p95_ms']:.1f}")
        mem_w = "short" if "short" in ws else next(iter(ws))
        row += [f"{ws[mem_w]['peak_rss_mb']:.0f}", f"{ws[mem_w]['load_s']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    levels = {n: e.get("accuracy_level", "–") for n, e in summary.items() if e.get("accuracy_level", "–") != "–"}
    if levels:
        # The level is baked in by the CPU that built each variant and decides much of its speed.
        lines += ["", "MatMulNBits accuracy level (chosen when each variant was built): "
                  + ", ".join(f"{n} {lv}" for n, lv in levels.items()) + "."]
    if through:
        lines += ["", "Best repeat of each system (tokens/s, ×fp32, ×torch): steadier than the medians when the "
                  "machine's speed changes during the run; the verdicts below use the medians.", ""]
        lines += ["| system | " + " | ".join(f"{w} best" for w in through) + " |", "|" + "---|" * (len(through) + 1)]
        for name, entry in summary.items():
            ws = entry["workloads"]
            lines.append(f"| {name} | " + " | ".join(
                f"{ws[w]['best_tokens_per_s']:.0f}{_ratios(ws[w].get('best_vs_fp32_onnx'), ws[w].get('best_vs_torch'))}"
                for w in through) + " |")
    lines += _side_by_side(meta, summary, through)
    lines += _ceiling(meta, summary, through)
    if meta.get("fidelity"):
        lines += ["", "Fidelity (cosine to fp32 on the parity texts, worst prompt): " + "; ".join(
            f"{v} mean {f['mean']:.5f} / min {f['min']:.5f} ({'meets' if f['meets'] else 'misses'} its target)"
            for v, f in meta["fidelity"].items())]
    if meta.get("targets"):
        lines += ["", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'PASS' if t['ok'] else '**MISS**'} |" for t in meta["targets"]]
    return "\n".join(lines) + "\n"


def _peak_cell(e: dict) -> str:
    # onnxruntime's integer GEMM runs on the matrix unit (AMX) where there is one; MatMulNBits at level
    # 4 on int8 dot products: each row is shown against the ceiling of the units it runs on
    return share_text(e.get("of_fp32_peak"), e.get("of_int8_peak"), e.get("of_matrix_peak"))


def _side_by_side(meta: dict, summary: dict, through: list[str]) -> list[str]:
    """Size, fidelity, speed and share of the machine's peak per system: the table to choose by."""
    fidelity, ceiling = meta.get("fidelity") or {}, meta.get("ceiling")
    if not fidelity and not ceiling:
        return []
    header = ["system", "size MB", "cos to fp32 mean / min"] + [f"{w} tok/s" for w in through]
    if ceiling:
        header += [f"{w} share of peak" for w in through]
    lines = ["", "Size, fidelity (cosine to the fp32 artifact on the parity texts, worst prompt), speed (medians) "
             "and the share of the machine's peak each reaches (below):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        f = fidelity.get(name)
        if entry["system"] == "onnx" and entry["variant"] == "fp32":
            cos = "1 (reference)"
        else:
            cos = f"{f['mean']:.4f} / {f['min']:.4f}" if f else "–"
        row = [name, f"{entry['size_mb']:.0f}", cos] + [f"{entry['workloads'][w]['tokens_per_s']:.0f}" for w in through]
        if ceiling:
            row += [_peak_cell(entry["workloads"][w]) for w in through]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _ceiling(meta: dict, summary: dict, through: list[str]) -> list[str]:
    c = meta.get("ceiling")
    if not c:
        return []
    work = ", ".join(f"{w} {meta['workloads'][w]['gflop']:.1f}" for w in through if "gflop" in meta["workloads"][w])
    lines = ["", f"Ceiling: {c['cores']} cores x {c['ghz']:.2f} GHz ({c['clock_source']}) x {c['fp32_per_cycle']} fp32 "
             f"FLOPs per cycle = **{c['fp32_gflops']:.0f} GFLOP/s fp32**, x {c['int8_per_cycle']} int8 ops per cycle = "
             f"**{c['int8_gops']:.0f} GOP/s int8**"
             + (f", x {c['int8_matrix_per_cycle']} on the matrix unit = **{c['int8_matrix_gops']:.0f} GOP/s AMX int8**, "
                "the ceiling of the rows on onnxruntime's integer GEMM (w8a8); MatMulNBits has no AMX kernel"
                if c.get("int8_matrix_gops") else "")
             + f" ({c['assumption']}). Useful arithmetic per workload (linear layers, "
             f"attention within its windows, heads; padding not counted), GFLOP: {work}. Rows whose matmuls multiply "
             "int8 (w8a8, MatMulNBits at accuracy level 4, llama.cpp's quantized types, sentence-transformers' int8) "
             "are held against the int8 peak; the rest of each row's time goes to what the per-op profile shows "
             "(docs/notes/bench.md).", "",
             "| system | " + " | ".join(f"{w} GFLOP/s (share of peak)" for w in through) + " |",
             "|" + "---|" * (len(through) + 1)]
    for name, entry in summary.items():
        ws = entry["workloads"]
        lines.append(f"| {name} | " + " | ".join(
            f"{ws[w]['gflops']:.0f} ({_peak_cell(ws[w])})" if "gflops" in ws[w] else "" for w in through) + " |")
    return lines


def _color(i: int):
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)   # with the peers there are more systems than 10 default colours


def _plot(path: Path, meta: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    through = [w for w in meta["workloads"] if w != "latency"]
    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [summary[name]["workloads"][w]["tokens_per_s"] for w in through]
        axes[0].bar([x + i * width for x in range(len(through))], values, width, label=name, color=_color(i))
    axes[0].set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(through))], through)
    c = meta.get("ceiling")
    if c:   # the fp32 peak in tokens/s of each workload, over its group of bars
        for x, w in enumerate(through):
            per_token = meta["workloads"][w].get("gflop", 0) / meta["workloads"][w]["tokens"]
            if per_token:
                axes[0].hlines(c["fp32_gflops"] / per_token, x - width / 2, x + width * (len(names) - 0.5),
                               colors="black", linestyles="dashed", label="fp32 peak" if x == 0 else None)
    axes[0].set_ylabel("tokens / s")
    axes[0].set_title(f"Throughput ({meta['threads']} threads)" + (
        f"; int8 peak {c['int8_gops'] / c['fp32_gflops']:.0f}x the fp32 line" if c else ""))
    axes[0].legend(fontsize=7, ncol=2)
    mem_w = "short" if "short" in meta["workloads"] else next(iter(meta["workloads"]))
    # Variants of similar size sit close together: alternate labels above and below, by size.
    for i, name in enumerate(sorted(names, key=lambda n: summary[n]["size_mb"])):
        e = summary[name]
        axes[1].scatter(e["size_mb"], e["workloads"][mem_w]["peak_rss_mb"], s=60, color=_color(names.index(name)))
        axes[1].annotate(name, (e["size_mb"], e["workloads"][mem_w]["peak_rss_mb"]), fontsize=8,
                         xytext=(4, 5 if i % 2 == 0 else -12), textcoords="offset points")
    axes[1].set_xlabel("size on disk (MB)")
    axes[1].set_ylabel(f"peak RSS, {mem_w} workload (MB)")
    axes[1].set_title("Size vs memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
