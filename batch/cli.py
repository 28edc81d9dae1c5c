"""``embeddinggemma embed-corpus`` (and ``python -m batch``): the corpus job's command line.

Registered with the ``embeddinggemma`` command through the ``embeddinggemma.commands`` entry point.
pyarrow (the ``corpus`` extra) and Ray (the ``ray`` extra) are imported only when the command runs,
so a missing one is reported with the line that installs it.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from runtime.cli import MODEL_ENV, CLIError, install_hint, positive_int, run_standalone

CORPUS_EXTRA_HINT = install_hint("corpus")

EXAMPLES = f"""examples:
  # a folder of Parquet files, document prompt, ids from the "doc_id" column, on this machine
  embeddinggemma embed-corpus corpus/ --output vectors/ --model artifacts/q4_0 \\
      --text-column body --id-column doc_id --prompt-name document

  # JSON Lines on S3 with titles, 256-dim vectors, on a running Ray cluster, the artifact shipped
  embeddinggemma embed-corpus s3://bucket/corpus/ --output s3://bucket/vectors-256/ \\
      --model artifacts --variant q4_0 --title-column title --dim 256 \\
      --engine ray --address auto --artifact-transfer ship

Rerun the same command after an interruption: finished shards are kept and the rest are made.
Output: one Parquet file per shard (id, embedding: fixed-size list of float32; the artifact's variant,
manifest sha256 and the settings in the file metadata), errors.jsonl with every bad row (id, source,
row, reason) and _job.json with the accounting (rows in = embedded + bad).
Needs the corpus extra ({CORPUS_EXTRA_HINT}); --engine ray also needs the ray extra
({install_hint("ray")}).

exit codes: 0 success (bad rows are reported, not fatal), 2 bad arguments, inputs or output folder.
"""

DESCRIPTION = ("Embed a corpus of Parquet, JSON Lines or CSV files (local or any pyarrow/fsspec URI)\n"
               "into Parquet shards, on this machine or a Ray cluster; resumable.")


def add_command(subparsers) -> argparse.ArgumentParser:
    """Add ``embed-corpus`` to the ``embeddinggemma`` command's subparsers (the entry point's target)."""
    parser = subparsers.add_parser("embed-corpus", help="embed a corpus of files into Parquet shards (local or Ray)",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    from .settings import DEFAULT_ROWS_PER_SHARD

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="input file or folder (searched recursively), local path or URI (s3://, gs://, ...)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (local path or URI)")
    parser.add_argument("--model", metavar="DIR", help=f"artifact folder (default: ${MODEL_ENV})")
    parser.add_argument("--variant", metavar="NAME",
                        help="variant to use when --model holds several (DIR/NAME); checked against the manifest")
    parser.add_argument("--text-column", default="text", metavar="NAME", help="column with the text (default: text)")
    parser.add_argument("--id-column", metavar="NAME", help="column with the ids (default: FILE:ROW)")
    parser.add_argument("--title-column", metavar="NAME",
                        help="column with titles for the document prompt (null titles give 'title: none')")
    parser.add_argument("--input-format", choices=("parquet", "jsonl", "csv"),
                        help="read every input file as this (default: from each file's extension)")
    parser.add_argument("--prompt-name", "--task", dest="prompt_name", metavar="NAME",
                        help="model prompt: document, query, STS, ... (default: none; titles imply document)")
    parser.add_argument("--dim", type=int, metavar="N", help="Matryoshka size (default: the model's full size)")
    parser.add_argument("--no-normalize", action="store_true", help="store raw vectors instead of unit length")
    parser.add_argument("--no-truncate", action="store_true",
                        help="send texts longer than the model's maximum to the errors file instead of cutting them")
    parser.add_argument("--rows-per-shard", type=positive_int, default=DEFAULT_ROWS_PER_SHARD, metavar="N",
                        help=f"rows per output file: the unit of resume and retry (default {DEFAULT_ROWS_PER_SHARD})")
    parser.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                        help="texts per inference batch (default 32)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="onnxruntime threads per Embedder (default: all cores locally, 1 per Ray actor)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process; ray: a pool of Ray actors (default local)")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join (auto, or HOST:PORT); default: start a local one")
    parser.add_argument("--actors", type=positive_int, metavar="N",
                        help="Ray actors, one Embedder each (default: the cluster's CPUs / --threads)")
    parser.add_argument("--artifact-transfer", choices=("shared", "ship"), default="shared",
                        help="shared: every node reads --model at the same path; ship: send the artifact "
                             "through Ray's object store (default shared)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output (another job's, or this job's finished shards)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show a progress bar on stderr (default: on a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the sha256 check of the artifact files (sizes and the manifest hash are checked)")
    parser.set_defaults(func=embed_corpus_command)


def embed_corpus_command(args) -> int:
    """Run the job the arguments describe and print its accounting."""
    import os

    model = args.model or os.environ.get(MODEL_ENV)
    if not model:
        raise CLIError(f"no model: pass --model DIR (an artifact folder) or set {MODEL_ENV}=DIR")
    if importlib.util.find_spec("pyarrow") is None:
        raise CLIError(f"embed-corpus reads and writes Parquet with pyarrow, which is not installed: {CORPUS_EXTRA_HINT}")
    if args.engine == "local" and (args.address or args.actors):
        raise CLIError("--address and --actors are for --engine ray")
    from . import CorpusError, RayOptions, embed_corpus

    show = args.progress
    if show is None:
        show = sys.stderr is not None and sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None
    try:
        report = embed_corpus(
            args.inputs, args.output, model, text_column=args.text_column, id_column=args.id_column,
            title_column=args.title_column, prompt_name=args.prompt_name, dim=args.dim,
            normalize=not args.no_normalize, truncate=not args.no_truncate, variant=args.variant,
            input_format=args.input_format, rows_per_shard=args.rows_per_shard, batch_size=args.batch_size,
            threads=args.threads, verify=not args.no_verify, engine=args.engine,
            ray=RayOptions(address=args.address, actors=args.actors, artifact_transfer=args.artifact_transfer),
            force=args.force, progress=show)
    except CorpusError as exc:
        raise CLIError(str(exc)) from None
    print(report.summary(), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m batch ...``, the same as ``embeddinggemma embed-corpus ...``."""
    return run_standalone("embeddinggemma embed-corpus", add_arguments, DESCRIPTION, EXAMPLES, argv)
