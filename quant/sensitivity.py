"""Per-weight sensitivity: what 4 bits at one weight cost the pooled embedding, measured.

``python -m quant.sensitivity --in FP32_DIR --json FILE`` runs the fp32 artifact with one
decoder-layer weight at a time replaced by its round-to-nearest Q4_0 values (an initializer override
in onnxruntime's session options: nothing is written) on calibration texts only (never the parity or
quality texts), and records per weight the mean ``1 - cos`` of the embedding against fp32. The size
budget (``quant.budget``) ranks weights by it; ``--sensitivity FILE`` of ``embeddinggemma-quant``
reuses a saved measurement. ``--estimate`` also prints a Hessian-weighted estimate (the calibrated
relative output error ``tr(E H E^T) / tr(W H W^T)``) and its rank correlation with the measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from runtime.compare import embed_texts
from runtime.onnx_helpers import read_initializer
from runtime.outputs import add_json_option, claim_json_option, write_text_atomic
from runtime.progress import progress_bar
from runtime.vectors import row_cosines

from . import graph as G
from .calibration import ActivationStats, collect_statistics, load_calibration_texts
from .formats import BlockFormat, get_format
from .source import Fp32Source, QuantInputError, open_fp32_artifact

#: Calibration texts embedded per weight: 16 keep one weight at ~5 s on 2 cores (real model).
DEFAULT_TEXTS = 16
FORMAT = "Q4_0"


def measure(src: Fp32Source, sites: list[G.WeightSite], texts: list[str], threads: int | None = None,
            progress: bool = True) -> dict[str, float]:
    """``{weight: mean 1 - cos}`` of the embedding with only that weight in Q4_0 (round-to-nearest)."""
    import onnxruntime as ort

    from runtime.embedder import Embedder, runtime_session_options

    inits = {i.name: i for i in src.graph().graph.initializer}
    fmt = get_format(FORMAT)
    ref = embed_texts(src.folder, texts, threads=threads)[None]
    out = {}
    with progress_bar(len(sites), f"sensitivity ({fmt.name} at one weight at a time)", progress,
                      unit="weight") as bar:
        for site in sites:
            w_t = np.asarray(read_initializer(inits[site.name], src.folder), np.float32)    # [K, N]
            decoded = fmt.dequantize(*fmt.quantize(np.ascontiguousarray(w_t.T))).reshape(w_t.shape[1], -1).T
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(decoded, np.float32))
            options = runtime_session_options(threads)
            options.add_initializer(site.name, value)
            with warnings.catch_warnings():   # long calibration texts are cut on purpose, as in the reference
                warnings.simplefilter("ignore")
                got = Embedder(src.folder, verify=False, session_options=options).encode(texts)
            out[site.name] = float(np.mean(1.0 - row_cosines(ref, got)))
            bar.update(1)
    return out


def save(path: str | Path, src: Fp32Source, cost: dict[str, float], texts: int, extra: dict | None = None) -> None:
    """Write a measurement with the fp32 artifact's weights hash, so it is never applied to another model."""
    data = {"fp32_artifact": src.data_sha256, "format": FORMAT, "texts": texts, "weights": cost, **(extra or {})}
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def load(path: str | Path, src: Fp32Source) -> dict[str, float]:
    """A saved measurement's ``{weight: cost}``; raises ``QuantInputError`` if it is of another fp32 artifact."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        weights, made_from = data["weights"], data["fp32_artifact"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QuantInputError(f"--sensitivity {str(path)!r} is not a file written by python -m quant.sensitivity "
                              f"({exc})") from None
    if made_from != src.data_sha256:
        raise QuantInputError(f"--sensitivity {str(path)!r} was measured on another fp32 artifact; measure this one "
                              f"with python -m quant.sensitivity --in {src.folder} --json FILE")
    return {name: float(v["measured"] if isinstance(v, dict) else v) for name, v in weights.items()}


def site_errors(src: Fp32Source, stats: ActivationStats, sites: list[G.WeightSite],
                fmt: BlockFormat) -> dict[str, float]:
    """``{weight: tr(E H E^T) / tr(W H W^T)}`` for round-to-nearest in ``fmt`` (the Hessian-weighted estimate)."""
    inits = {i.name: i for i in src.graph().graph.initializer}
    out = {}
    for site in sites:
        w = np.ascontiguousarray(np.asarray(read_initializer(inits[site.name], src.folder), np.float32).T)  # [N, K]
        h = stats.hessians[site.activation]
        e = (w - fmt.dequantize(*fmt.quantize(w)).reshape(w.shape)).astype(np.float64)
        out[site.name] = float(np.einsum("ij,ij->", e @ h, e)) / max(float(np.einsum("ij,ij->", w @ h, w)), 1e-30)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equal-length lists (no ties expected)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> int:
    """Measure (and save) what Q4_0 at each decoder-layer weight costs the embedding."""
    parser = argparse.ArgumentParser(prog="python -m quant.sensitivity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--in", dest="source", required=True, metavar="FP32_DIR", help="fp32 artifact folder")
    add_json_option(parser, "write the measurement here (for --sensitivity of the quant CLI)")
    parser.add_argument("--texts", type=int, default=DEFAULT_TEXTS,
                        help=f"calibration texts embedded per weight (default {DEFAULT_TEXTS})")
    parser.add_argument("--estimate", action="store_true",
                        help="also compute the Hessian-weighted estimate (calibration, minutes) and its rank correlation")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    claim_json_option(parser, args)

    src = open_fp32_artifact(args.source, verify=False)
    texts = load_calibration_texts()
    sites = [s for s in src.sites if G.site_position(s.name)]
    cost = measure(src, sites, texts[: args.texts], threads=args.threads)
    extra, estimate = {}, {}
    if args.estimate:
        stats = collect_statistics(src, texts, threads=args.threads)
        estimate = site_errors(src, stats, sites, get_format(FORMAT))
        extra = {"estimate": estimate, "spearman": spearman(list(cost.values()), [estimate[n] for n in cost])}
    print(f"{'weight':<48} {'1 - cos':>10}" + (f" {'estimate':>10}" if estimate else ""))
    for name, c in sorted(cost.items(), key=lambda kv: -kv[1]):
        print(f"{name:<48} {c:>10.3e}" + (f" {estimate[name]:>10.3e}" if estimate else ""))
    if estimate:
        print(f"rank correlation of the estimate with the measurement over {len(cost)} weights: {extra['spearman']:.3f}")
    if args.json:
        save(args.json, src, cost, args.texts, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
