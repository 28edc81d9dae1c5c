"""``embeddinggemma-quant`` / ``python -m quant``: fp32 artifact -> quantized artifacts (any recipe)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from runtime.outputs import OutputExistsError

from .recipe import STANDARD_VARIANTS, RecipeError, allowed_text, parse_variants

EXAMPLES = """examples:
  embeddinggemma-quant --in artifacts/fp32 --variant q4_0 --out artifacts/q4_0
  embeddinggemma-quant --in artifacts/fp32 --variant all --out artifacts   # q8_0/ q4_0/ e4_a8_f4_p4/ w8a8/
  embeddinggemma-quant --in artifacts/fp32 --variant e8_a8_f4_p8 --out artifacts/e8_a8_f4_p8 --method rtn
  embeddinggemma-quant --in artifacts/fp32 --variant "q4_0:f8@20-23" --out artifacts/q4_0-f8-top
  embeddinggemma-quant --in artifacts/fp32 --variant q4_0 --budget 200MB --out artifacts/q4_0-200mb
  embeddinggemma-quant --in artifacts/fp32 --variant q8_0 --tokenizer sentencepiece --out artifacts/q8_0-small

variants: q8_0 (closest to fp32, ~1/4 of its size), q4_0 (the smallest), e4_a8_f4_p4 (Google's mixed
recipe), w8a8 (int8 matrix products, the fastest on CPUs with VNNI); `all` builds these four.
w8a8_s4 (e4_a4i_f4i_p8:v8,down8) is w8a8's graph from a 4-bit download (Q4_0 blocks re-coded to int8
when the session loads: more memory while loading; for browsers).
recipes: e{F}_a{F}_f{F}_p{F} for the token embeddings (e), attention projections (a), feed-forward
(f) and the Dense projection heads (p), F a block format: 8 = Q8_0, 4 = Q4_0, 5 = Q5_0; a8i / f8i
put attention / feed-forward on the int8 integer path. Norms and all other tensors stay fp32.
per-layer overrides after a colon: SEL{F}[@N|@N-M|@*], SEL = a or f (a layer's attention or
feed-forward) or one projection (q k v o gate up down), e.g. q4_0:f8@20-23,v8@0-3.
--budget SIZE starts from the --variant given and moves the weights where 8 bits buy the most
fidelity per byte to Q8_0 while the model files (model.onnx + weights) fit SIZE (MB = 10^6 bytes);
what 4 bits cost at each weight is measured on calibration texts (python -m quant.sensitivity).
The manifest records the chosen recipe, which rebuilds the same plan without --budget.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from runtime.tokenizer_files import CHOICES as TOKENIZER_CHOICES

    from .build import DEFAULT_METHOD
    from .quantizer import METHODS
    from .targets import TARGETS

    parser = argparse.ArgumentParser(
        prog="embeddinggemma-quant", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize an fp32 EmbeddingGemma ONNX artifact folder to ggml block formats (Q8_0, Q4_0, Q5_0, "
                    "mixed recipes) and the int8 integer path, as onnxruntime graphs.")
    parser.add_argument("--in", dest="source", required=True, metavar="FP32_DIR",
                        help="fp32 artifact folder written by embeddinggemma-export")
    parser.add_argument("--variant", required=True,
                        help=f"{allowed_text()}; or 'all' for {', '.join(STANDARD_VARIANTS)}")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="artifact folder to create; with --variant all, a parent folder that receives "
                             "one subfolder per variant")
    parser.add_argument("--force", action="store_true",
                        help="replace existing output folders (each only once its replacement is complete)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="how stored values are chosen, same formats either way: gptq = calibrated error feedback "
                             "(after activation-aware scales for 4-bit attention and feed-forward; 5-7 minutes for all four variants on 2 idle cores), "
                             "learned = gptq's, with each decoder layer's rounding and block scales learned so the layer reproduces "
                             "fp32 (needs torch; about 15 minutes on 2 cores; not better than gptq on "
                             "EmbeddingGemma, see docs/quantization.md), "
                             "corrected = gptq's, with each decoder layer's o, gate/up and down projections quantized "
                             "from weights that also undo the error of the layer's earlier projections (needs torch; "
                             "about 16 minutes for a q4_0 on 2 idle cores; the closest uniform q4_0 to fp32, see "
                             "docs/quantization.md), "
                             f"rtn = ggml round-to-nearest, bit-exact to gguf (default: {DEFAULT_METHOD})")
    parser.add_argument("--target", default="host", metavar="NAME",
                        help="the device class the artifact is built for; it fixes the CPU-dependent choices "
                             "below (default: host). " + "; ".join(f"{t.name}: {t.summary}" for t in TARGETS.values()))
    parser.add_argument("--accuracy-level", type=_accuracy_level, default=None, metavar="N|auto",
                        help="override the target's MatMulNBits accuracy_level 0-4 for every block-quantized matmul; "
                             "4 also quantizes activations to int8 per block of 32 (like llama.cpp), which costs "
                             "accuracy; auto times each built model at levels 0 and 4 on THIS machine per bit width "
                             "(seconds each) and keeps 4 only if it is >= 5%% faster (what --target host does)")
    parser.add_argument("--int8-activation-bits", default=None, choices=("auto", "7", "8"),
                        help="override the target's activation code width for integer-path recipes (w8a8): 8 is "
                             "exact only on CPUs with VNNI or Arm dot products (elsewhere the runtime refuses the "
                             "artifact), 7 runs exactly everywhere at some accuracy cost; auto = 8 if THIS CPU has "
                             "them, else 7 (what --target host does)")
    parser.add_argument("--budget", type=_budget, default=None, metavar="SIZE",
                        help="bytes of model files (e.g. 200MB, 190MiB): upgrade the --variant's decoder-layer weights "
                             "to Q8_0 where they buy the most fidelity per byte until the next one would not fit")
    parser.add_argument("--sensitivity", default=None, metavar="FILE",
                        help="with --budget: a measurement saved by `python -m quant.sensitivity --json FILE` for "
                             "this fp32 artifact (else it is measured during the build: ~5 s per weight, 2 cores)")
    parser.add_argument("--tokenizer", default="all", choices=TOKENIZER_CHOICES,
                        help="tokenizer files the folder ships (default all: tokenizer.json and, where export "
                             "shipped it, tokenizer.model); sentencepiece: tokenizer.model only, 33 MB smaller, "
                             "not loadable in the browser; tokenizers: tokenizer.json only; auto: sentencepiece "
                             "where the input has it, else tokenizers")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads for calibration, timing and the self-check (default: all cores)")
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
    logging.basicConfig(level=logging.WARNING, format="%(message)s")   # libraries from WARNING up, as export
    logging.getLogger("quant").setLevel(logging.WARNING if args.quiet else logging.INFO)

    from runtime.onnx_helpers import GraphError

    from .build import BuildOptions, build_variants
    from .source import QuantInputError

    # A plain SIGTERM would kill the process without unwinding, leaving a hidden staging folder
    # behind; turning it into SystemExit lets staged_output remove it.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if _main_thread() else None
    try:
        recipes = parse_variants(args.variant)
        all_variants = args.variant.strip().lower() == "all"
        out = Path(args.out)
        targets = [(r, out / r.name) if all_variants else (r, out) for r in recipes]
        bits = args.int8_activation_bits
        options = BuildOptions(method=args.method, target=args.target, accuracy_level=args.accuracy_level,
                               int8_activation_bits=bits if bits in (None, "auto") else int(bits),
                               threads=args.threads, progress=not args.quiet, check=not args.no_check,
                               force=args.force, budget=args.budget,
                               sensitivity=args.sensitivity, tokenizer=args.tokenizer)
        written = build_variants(args.source, targets, options)
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


def _budget(text: str) -> int:
    from .budget import parse_size
    from .source import QuantInputError

    try:
        return parse_size(text)
    except QuantInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
