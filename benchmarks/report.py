"""Write benchmark results as JSON, a Markdown table and a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, meta: dict, summary: dict, raw: dict) -> Path:
    """Write results.json, results.md and results.png into ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "raw": raw}, indent=2))
    md = out / "results.md"
    md.write_text(_markdown(meta, summary))
    _plot(out / "results.png", meta, summary)
    return md


def _fmt_ratio(x):
    return "" if x is None else f"{x:.2f}×"


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
            row.append(f"{e['tokens_per_s']:.0f} ({_fmt_ratio(e.get('vs_fp32_onnx'))}, {_fmt_ratio(e.get('vs_torch'))})")
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
                f"{ws[w]['best_tokens_per_s']:.0f} ({_fmt_ratio(ws[w].get('best_vs_fp32_onnx'))}, "
                f"{_fmt_ratio(ws[w].get('best_vs_torch'))})" for w in through) + " |")
    if meta.get("fidelity"):
        lines += ["", "Fidelity (cosine to fp32 on the parity texts, worst prompt): " + "; ".join(
            f"{v} mean {f['mean']:.5f} / min {f['min']:.5f} ({'meets' if f['meets'] else 'misses'} its target)"
            for v, f in meta["fidelity"].items())]
    if meta.get("targets"):
        lines += ["", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'PASS' if t['ok'] else '**MISS**'} |" for t in meta["targets"]]
    return "\n".join(lines) + "\n"


def _plot(path: Path, meta: dict, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    through = [w for w in meta["workloads"] if w != "latency"]
    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [summary[name]["workloads"][w]["tokens_per_s"] for w in through]
        axes[0].bar([x + i * width for x in range(len(through))], values, width, label=name)
    axes[0].set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(through))], through)
    axes[0].set_ylabel("tokens / s")
    axes[0].set_title(f"Throughput ({meta['threads']} threads)")
    axes[0].legend(fontsize=8)
    mem_w = "short" if "short" in meta["workloads"] else next(iter(meta["workloads"]))
    # Variants of similar size sit close together: alternate labels above and below, by size.
    for i, name in enumerate(sorted(names, key=lambda n: summary[n]["size_mb"])):
        e = summary[name]
        axes[1].scatter(e["size_mb"], e["workloads"][mem_w]["peak_rss_mb"], s=60, color=f"C{names.index(name)}")
        axes[1].annotate(name, (e["size_mb"], e["workloads"][mem_w]["peak_rss_mb"]), fontsize=8,
                         xytext=(4, 5 if i % 2 == 0 else -12), textcoords="offset points")
    axes[1].set_xlabel("size on disk (MB)")
    axes[1].set_ylabel(f"peak RSS, {mem_w} workload (MB)")
    axes[1].set_title("Size vs memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
