"""The design's speed, memory and load targets, checked against one benchmark run (PASS / MISS).

Fidelity comes from ``python -m quant.fidelity --json`` (cosine to fp32 on the parity texts), so
"the fastest variant that meets its fidelity target" is decided on measured numbers, not names.
"""
from __future__ import annotations

import json
from pathlib import Path

from quant.recipe import parse_recipe

#: Q8_0 and Q4_0 must reach 1.5x llama.cpp's Q8_0 speed (its measurement: docs/notes/bench.md).
MIN_BLOCK_TOKENS_PER_S = 525
#: The fastest variant that meets its fidelity target, against fp32 ONNX and torch, short workload.
MIN_SPEEDUP = 1.5
Q4_0_MAX_RSS_MB = 350
Q4_0_MAX_LOAD_S = 1.5


def load_fidelity(source: str | Path | dict | None, summary: dict) -> dict[str, dict]:
    """``{row name: {"variant", "mean", "min", "target", "meets"}}`` for the rows of ``summary`` that
    ``source`` (a quant.fidelity JSON: a path or the parsed dict) has, worst prompt. Our rows are found
    by their artifact folder (two builds of one variant stay apart), else by a variant only one row
    has; a peer's entry is keyed by its system name ("llama.cpp Q4_0")."""
    if not source:
        return {}
    from quant.fidelity import target_for

    data = source if isinstance(source, dict) else json.loads(Path(source).read_text(encoding="utf-8"))
    variants = [e["variant"] for e in summary.values()]
    out = {}
    for name, row in summary.items():
        if row["system"] != "onnx":
            entry = data.get(name)
        else:
            entry = next((e for key, e in data.items() if row.get("path") and _same_folder(key, row["path"])), None)
            if entry is None and variants.count(row["variant"]) == 1:
                entry = next((e for e in data.values() if e["variant"] == row["variant"]), None)
        if entry is None:
            continue
        prompts = entry["prompts"].values()
        mean, low = min(p["mean"] for p in prompts), min(p["min"] for p in prompts)
        target = target_for(entry["variant"])
        out[name] = {"variant": entry["variant"], "mean": mean, "min": low, "target": target,
                     "meets": target is not None and mean >= target[0] and low >= target[1]}
    return out


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check(summary: dict, fidelity: dict) -> list[dict]:
    """One row per target: what, measured, PASS / MISS / n/a."""
    rows = []
    onnx = {n: e for n, e in summary.items() if e["system"] == "onnx"}
    fp32 = next((n for n, e in onnx.items() if e["variant"] == "fp32"), None)
    torch_name = next((n for n, e in summary.items() if e["system"] == "torch"), None)

    def tps(name, w):
        return summary[name]["workloads"].get(w, {}).get("tokens_per_s")

    for w in ("short", "long"):
        if fp32 and tps(fp32, w):
            slower = [f"{n} {tps(n, w) / tps(fp32, w):.2f}x" for n in onnx if n != fp32 and tps(n, w) < tps(fp32, w)]
            rows.append({"target": f"{w} workload: no variant slower than fp32 ONNX",
                         "measured": "; ".join(slower) or "all at least as fast", "ok": not slower})
    for variant in ("q8_0", "q4_0"):
        name = next((n for n, e in onnx.items() if e["variant"] == variant), None)
        if name and tps(name, "short"):
            got = tps(name, "short")
            rows.append({"target": f"{variant} short workload >= {MIN_BLOCK_TOKENS_PER_S} tokens/s",
                         "measured": f"{got:.0f} tokens/s", "ok": got >= MIN_BLOCK_TOKENS_PER_S})
    q4 = next((n for n, e in onnx.items() if e["variant"] == "q4_0"), None)
    if q4 and "short" in summary[q4]["workloads"]:
        e = summary[q4]["workloads"]["short"]
        rows.append({"target": f"q4_0 peak resident memory <= {Q4_0_MAX_RSS_MB} MB (short workload)",
                     "measured": f"{e['peak_rss_mb']:.0f} MB", "ok": e["peak_rss_mb"] <= Q4_0_MAX_RSS_MB})
        rows.append({"target": f"q4_0 load <= {Q4_0_MAX_LOAD_S} s", "measured": f"{e['load_s']:.2f} s",
                     "ok": e["load_s"] <= Q4_0_MAX_LOAD_S})
    if fp32 and fidelity and tps(fp32, "short"):
        name = f"fastest variant meeting its fidelity target >= {MIN_SPEEDUP}x fp32 ONNX and torch"
        meeting = [n for n in onnx if fidelity.get(n, {}).get("meets")]
        if not meeting:
            rows.append({"target": name, "measured": "no variant meets its fidelity target", "ok": False})
        else:
            best = max(meeting, key=lambda n: tps(n, "short"))
            vs_fp32 = tps(best, "short") / tps(fp32, "short")
            vs_torch = tps(best, "short") / tps(torch_name, "short") if torch_name else None
            ok = vs_fp32 >= MIN_SPEEDUP and (vs_torch is None or vs_torch >= MIN_SPEEDUP)
            rows.append({"target": name,
                         "measured": f"{best}: {vs_fp32:.2f}x fp32" + (f", {vs_torch:.2f}x torch" if vs_torch else
                                                                       " (torch not measured)"),
                         "ok": ok})
    return rows + check_peers(summary, fidelity)


#: (our variant, the peer it must beat): faster on short and long texts, at least as close to fp32, no larger.
PEER_PAIRS = (("q8_0", "llama.cpp Q8_0"), ("q4_0", "llama.cpp Q4_0"), ("q4_0", "llama.cpp Q4_K_M"),
              ("w8a8", "st-onnx int8"), ("w8a8_fast", "st-onnx int8"))


def check_peers(summary: dict, fidelity: dict) -> list[dict]:
    """One row per (our variant, peer) pair present: speed on short and long texts, fidelity, size."""
    rows = []
    for variant, peer in PEER_PAIRS:
        if peer not in summary:
            continue
        for mine in [n for n, e in summary.items() if e["system"] == "onnx" and e["variant"] == variant]:
            rows += _pair(summary, fidelity, mine, variant, peer)
    return rows


def _pair(summary: dict, fidelity: dict, mine: str, variant: str, peer: str) -> list[dict]:
    """The verdicts of our row ``mine`` (a build of ``variant``) against ``peer``."""
    rows = []
    a, b = summary[mine], summary[peer]
    for w in ("short", "long"):
        ta, tb = a["workloads"].get(w, {}).get("tokens_per_s"), b["workloads"].get(w, {}).get("tokens_per_s")
        if ta and tb:
            rows.append({"target": f"{mine} faster than {peer}, {w} workload",
                         "measured": f"{ta:.0f} vs {tb:.0f} tokens/s ({ta / tb:.2f}x)", "ok": ta > tb})
    fa, fb = fidelity.get(mine), fidelity.get(peer)
    if fa and fb:
        rows.append({"target": f"{mine} at least as close to fp32 as {peer} (mean and min cosine)",
                     "measured": f"{fa['mean']:.4f} / {fa['min']:.4f} vs {fb['mean']:.4f} / {fb['min']:.4f}",
                     "ok": fa["mean"] >= fb["mean"] and fa["min"] >= fb["min"]})
    if not parse_recipe(variant).integer:   # the integer path trades size for speed: judged on speed and fidelity
        rows.append({"target": f"{mine} no larger than {peer}",
                     "measured": f"{a['size_mb']:.0f} vs {b['size_mb']:.0f} MB", "ok": a["size_mb"] <= b["size_mb"]})
    return rows


def main(argv=None) -> int:
    """Re-check a finished run's targets with (new) fidelity numbers and rewrite its report."""
    import argparse

    from benchmarks.report import write_report

    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=main.__doc__)
    parser.add_argument("run", help="folder of a benchmark run (with results.json)")
    parser.add_argument("--fidelity", required=True, metavar="JSON", help="output of `python -m quant.fidelity --json`")
    args = parser.parse_args(argv)
    run = Path(args.run)
    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    meta, summary = data["meta"], data["summary"]
    meta["fidelity"] = load_fidelity(args.fidelity, summary)
    meta["targets"] = check(summary, meta["fidelity"])
    print(write_report(run, meta, summary, data["raw"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
