"""Fidelity of quantized artifacts against their fp32 artifact: cosine per text, mean and min.

``python -m quant.fidelity --fp32 DIR VARIANT_DIR [VARIANT_DIR ...] [--texts FILE]`` prints a table.
The default texts are the export's parity corpus (81 texts: 20+ languages, code, emoji, documents
up to ~2,000 tokens), which the calibration texts never include. Torch-free.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime.artifact import read_manifest
from runtime.compare import cosines_to, embed_texts
from runtime.outputs import add_json_option, claim_json_option, write_text_atomic

#: The parity corpus (shipped with this package), the texts the quant targets are defined on.
DEFAULT_TEXTS = Path(__file__).with_name("parity_texts.json")
#: Targets of the quant issue / DESIGN.md: (mean, min) cosine against fp32 per recipe.
TARGETS = {"q8_0": (0.9995, 0.999), "q4_0": (0.99, 0.97), "e4_a8_f4_p4": (0.99, 0.97),
           # the speed-first variant must meet the Q8_0 target (benchmarks issue)
           "w8a8": (0.9995, 0.999),
           # its 4-bit download has 4-bit weights: the 4-bit target
           "w8a8_s4": (0.99, 0.97),
           # the static form trades fidelity for speed: between the 8-bit and the 4-bit targets
           # (measured 0.9980 / 0.9944, docs/notes/bench.md; dynamic per-tensor int8 reaches 0.92 / 0.38)
           "w8a8_fast": (0.997, 0.99)}


def target_for(variant: str | None) -> tuple[float, float] | None:
    """(mean, min) target of a manifest variant name; a budget recipe is held to its base format's
    (``quant.recipe.held_to``)."""
    from .recipe import held_to

    return held_to(TARGETS, variant)


def load_texts(path: str | Path = DEFAULT_TEXTS) -> list[str]:
    """Texts from a JSON list of strings or of objects with a ``text`` field, or from plain lines."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        items = json.loads(raw)
        return [t["text"] if isinstance(t, dict) else t for t in items]
    return [line for line in raw.splitlines() if line.strip()]


def measure(fp32_dir: str | Path, variant_dirs: list[str | Path], texts: list[str],
            prompt_names: tuple[str, ...] = ("document", "query"), threads: int | None = None) -> dict:
    """Cosine to fp32 for every variant, text and prompt: ``{folder: {variant, prompts: {prompt: {mean,
    min, worst_text}}}}`` (raw, unnormalised vectors compared; truncation of long texts is the same
    for every variant)."""
    ref = embed_texts(fp32_dir, texts, prompt_names, threads=threads, normalize=False)
    results = {}
    for folder in variant_dirs:
        name = read_manifest(folder).get("variant", Path(folder).name)
        per_prompt = {}
        for p, c in cosines_to(ref, folder, texts, threads=threads).items():
            per_prompt[p] = {"mean": float(c.mean()), "min": float(c.min()), "worst_text": int(c.argmin())}
        results[str(folder)] = {"variant": name, "prompts": per_prompt}
    return results


def main(argv: list[str] | None = None) -> int:
    """Print mean/min cosine of each variant folder against the fp32 folder."""
    parser = argparse.ArgumentParser(prog="python -m quant.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", required=True, help="the fp32 artifact folder")
    parser.add_argument("variants", nargs="+", help="quantized artifact folders")
    parser.add_argument("--texts", default=str(DEFAULT_TEXTS), help="JSON list or text file (default: parity corpus)")
    parser.add_argument("--threads", type=int, default=None)
    add_json_option(parser, "also write the results here")
    args = parser.parse_args(argv)
    claim_json_option(parser, args)
    texts = load_texts(args.texts)
    results = measure(args.fp32, args.variants, texts, threads=args.threads)
    print(f"{len(texts)} texts; cosine to fp32 (document prompt | query prompt)")
    print(f"{'folder':40} {'variant':14} {'mean':>10} {'min':>10} | {'mean':>10} {'min':>10}  target")
    for folder, r in results.items():
        d, q = r["prompts"]["document"], r["prompts"]["query"]
        target = target_for(r["variant"])
        verdict = "" if target is None else (
            "PASS" if min(d["mean"], q["mean"]) >= target[0] and min(d["min"], q["min"]) >= target[1] else "MISS")
        print(f"{folder:40} {r['variant']:14} {d['mean']:10.6f} {d['min']:10.6f} | {q['mean']:10.6f} {q['min']:10.6f}"
              f"  {target or ''} {verdict}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
