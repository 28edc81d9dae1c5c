"""``embeddinggemma-mobile`` / ``python -m mobile``: an artifact folder -> what a phone app ships."""
from __future__ import annotations

import argparse
import logging
import sys

from runtime.outputs import OutputExistsError

from .package import PLATFORMS, TOKENIZERS, MobileInputError, package_for_mobile

EXAMPLES = """examples:
  embeddinggemma-quant --in artifacts/fp32 --variant q4_0 --target arm64 --out artifacts/q4_0-arm64
  embeddinggemma-mobile --in artifacts/q4_0-arm64 --out mobile/q4_0

The folder holds model.ort, required_operators.config (for a reduced onnxruntime build), one
tokenizer file (tokenizer.model: sentencepiece, small in memory) and embedder.json (prompts, dims,
added tokens, sha256 of every file). docs/devices.md shows the Kotlin and Swift side.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="embeddinggemma-mobile", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Package one artifact folder for Android / iOS apps: ORT-format model, required-operators "
                    "config, one tokenizer file and the manifest.")
    parser.add_argument("--in", dest="source", required=True, metavar="ARTIFACT_DIR",
                        help="artifact folder (best one built with embeddinggemma-quant --target arm64)")
    parser.add_argument("--out", required=True, metavar="DIR", help="mobile folder to create")
    parser.add_argument("--tokenizer", default="auto", choices=TOKENIZERS,
                        help="the one tokenizer file to ship (default auto: tokenizer.model when the artifact has it)")
    parser.add_argument("--platform", default="arm", choices=PLATFORMS,
                        help="CPU family the optimizations are fixed for (default arm: phones)")
    parser.add_argument("--fold", action="store_true",
                        help="store weights the graph decodes at load (Q8_0 heads) decoded, as float32: about "
                             "14 MB larger for q8_0, no per-call decode of the two heads (default: packed)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (once the new one is complete)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the input files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = package_for_mobile(args.source, args.out, tokenizer=args.tokenizer, platform=args.platform,
                                 fold_constants=args.fold, force=args.force, verify=not args.no_verify)
    except (MobileInputError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
