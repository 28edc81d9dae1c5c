"""Per-weight sensitivity: what 4 bits at one weight cost the pooled embedding, measured and estimated.

``python -m quant.sensitivity --in FP32_DIR [--sites N] [--texts N] [--json FILE]`` runs the fp32
artifact with one decoder-layer weight at a time replaced by its round-to-nearest Q4_0 values (an
initializer override of onnxruntime's session options: nothing is written) on calibration texts
only, and prints per weight the measured ``1 - cos`` of the embedding against fp32 beside the
budget planner's estimate (``quant.budget.site_errors``), with their rank correlation. It is how the
estimate was checked; ``--budget`` itself needs only the estimate.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from runtime.compare import embed_texts
from runtime.onnx_helpers import read_initializer
from runtime.progress import progress_bar
from runtime.vectors import row_cosines

from . import graph as G
from .calibration import collect_statistics, load_calibration_texts
from .formats import get_format
from .source import open_fp32_artifact


def measure(fp32_dir: str, sites: list[G.WeightSite], texts: list[str], fmt_name: str = "Q4_0",
            threads: int | None = None, progress: bool = True) -> dict[str, float]:
    """``{site: mean 1 - cos}`` of the embedding with only that weight in ``fmt_name`` (round-to-nearest)."""
    import onnxruntime as ort

    from runtime.embedder import Embedder, runtime_session_options

    src = open_fp32_artifact(fp32_dir, verify=False)
    inits = {i.name: i for i in src.graph().graph.initializer}
    fmt = get_format(fmt_name)
    ref = embed_texts(fp32_dir, texts, threads=threads)[None]
    out = {}
    with progress_bar(len(sites), f"sensitivity ({fmt.name} one weight at a time)", progress, unit="weight") as bar:
        for site in sites:
            w_t = np.asarray(read_initializer(inits[site.name], src.folder), np.float32)    # [K, N]
            decoded = fmt.dequantize(*fmt.quantize(np.ascontiguousarray(w_t.T))).reshape(w_t.shape[1], -1).T
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(decoded, np.float32))
            options = runtime_session_options(threads)
            options.add_initializer(site.name, value)
            emb = Embedder(fp32_dir, verify=False, session_options=options)
            got = emb.encode(texts)
            out[site.name] = float(np.mean(1.0 - row_cosines(ref, got)))
            del emb, value
            bar.update(1)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equal-length lists (no ties expected)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally save) measured and estimated sensitivity per decoder-layer weight."""
    parser = argparse.ArgumentParser(prog="python -m quant.sensitivity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--in", dest="source", required=True, metavar="FP32_DIR", help="fp32 artifact folder")
    parser.add_argument("--sites", type=int, default=0,
                        help="measure every n-th weight in layer order to save time (0 = all; the estimate covers all)")
    parser.add_argument("--texts", type=int, default=32, help="calibration texts embedded per weight (default 32)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", metavar="FILE", help="write {site: {measured, estimate}} here")
    args = parser.parse_args(argv)

    from .budget import site_errors

    src = open_fp32_artifact(args.source, verify=False)
    texts = load_calibration_texts()
    layer_sites = [s for s in src.sites if G.site_position(s.name)]
    stats = collect_statistics(src, texts, threads=args.threads)
    estimate = site_errors(src, stats, layer_sites, (get_format("Q4_0"),))
    chosen = layer_sites[::max(1, len(layer_sites) // args.sites)] if args.sites else layer_sites
    measured = measure(args.source, chosen, texts[: args.texts], threads=args.threads)
    rows = {s.name: {"measured": measured[s.name], "estimate": estimate[s.name]["Q4_0"]} for s in chosen}
    print(f"{'weight':<48} {'measured 1-cos':>15} {'estimate':>10}")
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["measured"]):
        print(f"{name:<48} {r['measured']:>15.3e} {r['estimate']:>10.3e}")
    rho = spearman([r["measured"] for r in rows.values()], [r["estimate"] for r in rows.values()])
    print(f"rank correlation of estimate and measurement over {len(rows)} weights: {rho:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"spearman": rho, "texts": args.texts, "weights": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
