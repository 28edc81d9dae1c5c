"""``embeddinggemma-export`` / ``python -m export``: build the fp32 ONNX artifact."""
from __future__ import annotations

import argparse
import logging
import sys

from runtime.outputs import OutputExistsError

from .checkpoint import DEFAULT_MODEL, CheckpointError, resolve_checkpoint

EXAMPLES = """examples:
  embeddinggemma-export --out artifacts/fp32
  embeddinggemma-export --model ~/models/embeddinggemma-300m --out artifacts/fp32 --force
  embeddinggemma-export --model google/embeddinggemma-300m-qat-q4_0-unquantized --out artifacts/qat-fp32
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embeddinggemma-export", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export an EmbeddingGemma sentence-transformers checkpoint (Hub id or local folder) to a "
                    "self-contained fp32 ONNX artifact folder that runtime.Embedder loads.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"Hugging Face id or local checkpoint folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) when --model is an id")
    parser.add_argument("--out", required=True, help="artifact folder to create")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (only once the new one is complete)")
    parser.add_argument("--matryoshka-dims", default="768,512,256,128", type=_dims,
                        help="comma-separated Matryoshka sizes the runtime may truncate to (default: 768,512,256,128; "
                             "sizes above the model's dim are dropped)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    return parser


def _dims(value: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 768,512,256,128, got {value!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"dims must be positive integers, got {value!r}")
    return dims


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # our own steps at INFO; libraries (onnxscript, onnx_ir, transformers) only from WARNING up: their
    # INFO lines were over a thousand per export
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("export").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        checkpoint = resolve_checkpoint(args.model, args.revision)
        from .build import export_artifact  # imports torch: keep --help and argument errors fast

        out = export_artifact(checkpoint, args.out, force=args.force, matryoshka_dims=args.matryoshka_dims)
    except (CheckpointError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
