"""``embeddinggemma-quant`` / ``python -m quant``: fp32 artifact -> Q8_0, Q4_0 or mixed-recipe artifacts."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from runtime.artifact import OutputExistsError

from .recipe import DEFAULT_BLOCK_SIZE, STANDARD_VARIANTS, RecipeError, allowed_text, parse_variants

EXAMPLES = """examples:
  embeddinggemma-quant --in artifacts/fp32 --variant q4_0 --out artifacts/q4_0
  embeddinggemma-quant --in artifacts/fp32 --variant all --out artifacts      # q8_0/ q4_0/ e4_a8_f4_p4/
  embeddinggemma-quant --in artifacts/fp32 --variant e8_a8_f4_p8 --out artifacts/e8_a8_f4_p8 --method rtn

recipes: e{bits}_a{bits}_f{bits}_p{bits}, bits 4 (Q4_0) or 8 (Q8_0) for the token embeddings (e),
attention projections (a), feed-forward (f) and the Dense projection heads (p); q8_0 = e8_a8_f8_p8,
q4_0 = e4_a4_f4_p4. Norms and all other tensors stay fp32.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from .build import DEFAULT_EMBEDDING_OP, DEFAULT_METHOD, METHODS
    from .graph import EMBEDDING_OPS

    parser = argparse.ArgumentParser(
        prog="embeddinggemma-quant", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize an fp32 EmbeddingGemma ONNX artifact folder to ggml block formats (Q8_0/Q4_0) "
                    "expressed with onnxruntime's MatMulNBits and GatherBlockQuantized ops.")
    parser.add_argument("--in", dest="source", required=True, metavar="FP32_DIR",
                        help="fp32 artifact folder written by embeddinggemma-export")
    parser.add_argument("--variant", required=True,
                        help=f"{allowed_text()}; or 'all' for {', '.join(STANDARD_VARIANTS)}")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="artifact folder to create; with --variant all, a parent folder that receives "
                             "one subfolder per variant")
    parser.add_argument("--force", action="store_true",
                        help="replace existing output folders (each only once its replacement is complete)")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                        help="weights per block (default and only supported value: 32, as ggml defines Q8_0/Q4_0)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help=f"how stored values are chosen: rtn = ggml round-to-nearest (bit-exact to gguf), "
                             f"gptq = calibrated error feedback (after activation-aware scales for 4-bit attention and "
                             f"feed-forward), same format (default: {DEFAULT_METHOD})")
    parser.add_argument("--accuracy-level", type=_accuracy_level, default="auto", metavar="N|auto",
                        help="MatMulNBits accuracy_level 0-4 for every block-quantized matmul; 4 also quantizes "
                             "activations to int8 per block of 32 (like llama.cpp), which costs accuracy; which is "
                             "faster depends on the CPU; auto (default) times each built model at levels 0 and 4 on "
                             "THIS machine per bit width, on a batch and on a single text (~15 s each), and keeps 4 only if "
                             "it is >= 5%% faster (geometric mean), so build on the kind of CPU you deploy to")
    parser.add_argument("--int8-activation-bits", default="auto", choices=("auto", "7", "8"),
                        help="integer-path recipes (w8a8): activation code width; 8 is exact only on CPUs with VNNI "
                             "or Arm dot products (elsewhere the runtime refuses the artifact), 7 runs exactly "
                             "everywhere at some accuracy cost; auto (default) = 8 if THIS CPU has them, else 7")
    parser.add_argument("--embedding-op", default=DEFAULT_EMBEDDING_OP, choices=EMBEDDING_OPS,
                        help="token-table lookup: gather = standard ops with float16 scales (smaller), gbq = "
                             "com.microsoft.GatherBlockQuantized with float32 scales (+2 bytes per 32 weights); "
                             f"both decode identically (default: {DEFAULT_EMBEDDING_OP})")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads for calibration and the self-check (default: all cores)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the self-check that embeds a few texts with the new artifact and fp32")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only (no progress bars)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its own message; hand back its code instead of exiting
        return int(exc.code or 0)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    from .build import QuantInputError, build_variants
    from .graph import GraphError

    # A plain SIGTERM would kill the process without unwinding, leaving a hidden staging folder
    # behind; turning it into SystemExit lets staged_output remove it.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _main_thread() else None
    try:
        recipes = parse_variants(args.variant, block_size=args.block_size)
        all_variants = args.variant.strip().lower() == "all"
        out = Path(args.out)
        targets = [(r, out / r.name) if all_variants else (r, out) for r in recipes]
        written = build_variants(args.source, targets, force=args.force, method=args.method,
                                 accuracy_level=args.accuracy_level, threads=args.threads,
                                 progress=not args.quiet, check=not args.no_check, embedding_op=args.embedding_op,
                                 int8_activation_bits=args.int8_activation_bits if args.int8_activation_bits == "auto"
                                 else int(args.int8_activation_bits))
    except (RecipeError, QuantInputError, OutputExistsError, GraphError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for path in written:
        print(path)
    return 0


def _accuracy_level(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip() in ("0", "1", "2", "3", "4"):
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 0, 1, 2, 3, 4 or auto, got {text!r}")


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
