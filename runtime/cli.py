"""``embeddinggemma``: embed texts from the command line (``embed``), plus the commands other parts
of the package register (``serve``).

Only the standard library is imported at module level; the runtime (onnxruntime, tokenizers, numpy)
is imported when a command runs, so ``--help`` is instant. Commands that live above the runtime
register themselves under the ``embeddinggemma.commands`` entry-point group (a function that adds
its subparser), so this module never imports them. Nothing here needs torch.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from runtime.outputs import OutputExistsError, refuse_existing, replaced_atomically

MODEL_ENV = "EMBEDDINGGEMMA_MODEL"
#: Entry-point group of the commands other packages add (``name = "package.module:add_command"``).
COMMANDS_GROUP = "embeddinggemma.commands"
FORMATS = ("jsonl", "npy", "csv")
EXTENSION_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy", ".csv": "csv"}
JSONL_EXTENSIONS = (".jsonl", ".ndjson")
PROGRESS_MIN_TEXTS = 256  # below this a progress bar is just flicker


def install_hint(extra: str) -> str:
    """How to install one of the package's extras: it is not on PyPI, so from the root of a clone."""
    return f"pip install -e '.[{extra}]' from the root of the embeddinggemma-onnx clone"


MAIN_EXAMPLES = f"""examples:
  embeddinggemma embed --model artifacts/fp32 "Which planet is known as the Red Planet?"
  embeddinggemma serve --model artifacts/fp32 --port 8000

Set {MODEL_ENV}=DIR to skip --model. `embeddinggemma COMMAND --help` shows each command's options.
"""

EMBED_EXAMPLES = f"""examples:
  # two texts as arguments, query prompt, 256-dim vectors, JSON Lines on stdout
  embeddinggemma embed --model artifacts/fp32 --task query --dim 256 "red planet" "gas giant"

  # one text per line on stdin, into a NumPy array of shape (lines, 768)
  cat docs.txt | embeddinggemma embed --model artifacts/q4_0 --prompt-name document --output docs.npy

  # JSON Lines records {{"id": ..., "text": ..., "title": ...}}; titles fill the document prompt
  embeddinggemma embed --model artifacts/fp32 --input docs.jsonl --output vectors.jsonl

  # CSV, one row of floats per text, no header; raw (unnormalised) vectors
  export {MODEL_ENV}=artifacts/fp32
  embeddinggemma embed --input notes.txt --format csv --no-normalize > vectors.csv

input: texts as arguments, or --input FILE (or - for stdin), or one text per line on stdin. Plain
input is one text per line (blank lines are skipped). JSON Lines input (chosen by a .jsonl/.ndjson
name or --input-format jsonl) has one object per line with a "text" string and optional "title"
(string or null) and "id" (any JSON value).

output: jsonl (default; one {{"index", "text" or "id", "embedding"}} object per line, in input
order), npy (float32 array [texts, dim]) or csv (one row per text, 9 significant digits). The
format follows --output's extension unless --format is given.

exit codes: 0 success, 2 bad arguments or input (message on stderr, no traceback).
"""


class CLIError(Exception):
    """A problem with the arguments or the input: printed as ``error: ...``, exit code 2."""


def positive_int(text: str) -> int:
    """argparse type for counts: an int >= 1, or a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: ``embed`` and every registered command (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="embeddinggemma", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=MAIN_EXAMPLES,
        description="EmbeddingGemma text embeddings from an ONNX artifact folder, without PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    embed = sub.add_parser(
        "embed", help="embed texts to JSON Lines, .npy or CSV", epilog=EMBED_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Embed texts with an EmbeddingGemma artifact folder and write the vectors.")
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: --input or stdin)")
    embed.add_argument("--model", metavar="DIR", help=f"artifact folder (default: ${MODEL_ENV})")
    embed.add_argument("-i", "--input", metavar="FILE", help="read texts from FILE ('-' = stdin)")
    embed.add_argument("--input-format", choices=("lines", "jsonl"),
                       help="how to read --input/stdin (default: jsonl for .jsonl/.ndjson names, else lines)")
    prompt = embed.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", "--task", dest="prompt_name", metavar="NAME",
                        help="model prompt to prepend: query, document, STS, Classification, Clustering, ... "
                             "(default: none; titles imply document)")
    prompt.add_argument("--prompt", dest="prompt", metavar="TEXT", help="literal prefix instead of a named prompt")
    embed.add_argument("--dim", type=int, metavar="N", help="Matryoshka size (default: the model's full size)")
    embed.add_argument("--no-normalize", action="store_true", help="return raw vectors instead of unit length")
    embed.add_argument("--no-truncate", action="store_true",
                       help="fail on texts longer than the model's maximum instead of truncating them")
    embed.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="texts per batch (default 32)")
    embed.add_argument("--threads", type=positive_int, metavar="N", help="onnxruntime threads (default: all cores)")
    embed.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    embed.add_argument("--format", choices=FORMATS, help="output format (default: from --output's extension; jsonl)")
    embed.add_argument("--force", action="store_true", help="replace --output if it exists (once the new one is complete)")
    progress = embed.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="show a progress bar on stderr (default: on a terminal, for long inputs)")
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    embed.add_argument("--no-verify", action="store_true",
                       help="skip the sha256 check of the artifact files (sizes are still checked)")
    embed.set_defaults(func=_embed_command)

    for command in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        command.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code (0 ok, 2 bad arguments or input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its message; hand back its code instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.func, args)


def run_standalone(prog: str, add_arguments, description: str, epilog: str, argv: list[str] | None) -> int:
    """``python -m PACKAGE ...`` for a command registered under ``embeddinggemma``: its own parser
    (``add_arguments(parser)`` sets ``func``), argparse's exit codes returned, then ``run_command``."""
    parser = argparse.ArgumentParser(prog=prog, epilog=epilog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run_command(args.func, args)


def run_command(func, args) -> int:
    """Run one command's function the way every command of this CLI ends: its return code, or 2 with
    ``error: ...`` for a ``CLIError``, 130 on Ctrl-C, 1 when the reader of stdout went away."""
    try:
        return func(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error worth a traceback.
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---- embed -----------------------------------------------------------------------------------

def _embed_command(args) -> int:
    # Input and output problems are reported before the (slow) model load.
    texts, titles, ids = _read_texts(args)
    fmt = _output_format(args)
    emb = _load_embedder(args.model, threads=args.threads, verify=not args.no_verify)
    vectors = _encode(emb, args, texts, titles)
    _write(vectors, fmt, args.output, texts, ids)
    return 0


def _looks_like_json_object(line: str) -> bool:
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _read_texts(args) -> tuple[list[str], list[str | None] | None, list | None]:
    """Texts, optional titles and optional ids from the arguments, --input FILE or stdin."""
    if args.texts:
        if args.input is not None:
            raise CLIError("give texts as arguments or with --input FILE, not both")
        return list(args.texts), None, None
    source = args.input if args.input is not None else "-"
    if source == "-":
        if args.input is None and sys.stdin is not None and sys.stdin.isatty():
            raise CLIError("no texts: give them as arguments, with --input FILE, or one per line on stdin")
        name = "stdin"
        try:
            data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        except (OSError, AttributeError) as exc:
            raise CLIError(f"cannot read stdin: {exc}") from None
    else:
        name = source
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise CLIError(f"cannot read --input {source}: {exc.strerror or exc}") from None
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None

    fmt = args.input_format or ("jsonl" if Path(name).suffix.lower() in JSONL_EXTENSIONS else "lines")
    # split("\n") rather than splitlines(): texts may legitimately contain U+2028, form feeds, etc.
    lines = [line[:-1] if line.endswith("\r") else line for line in content.split("\n")]
    if fmt == "lines":
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise CLIError(f"{name} has no texts (blank lines are skipped)")
        if args.input_format is None and all(_looks_like_json_object(t) for t in texts):
            # plain lines are the default for stdin and unknown names; say so before embedding JSON text
            print(f"warning: every line of {name} looks like a JSON object but is embedded as plain text; pass "
                  "--input-format jsonl to read the \"text\" (\"title\", \"id\") fields, or --input-format lines "
                  "to silence this", file=sys.stderr)
        return texts, None, None

    texts, titles, ids = [], [], []
    has_ids = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CLIError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise CLIError(f"{where} is not a JSON object; expected {{\"text\": \"...\"}}")
        if "text" not in record:
            raise CLIError(f"{where} has no \"text\" field (keys: {', '.join(map(str, record)) or 'none'})")
        text = record["text"]
        if not isinstance(text, str):
            raise CLIError(f"{where}: \"text\" is {_json_type(text)}, expected a string")
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise CLIError(f"{where}: \"title\" is {_json_type(title)}, expected a string or null")
        has_ids = has_ids or "id" in record
        texts.append(text)
        titles.append(title)
        ids.append(record.get("id"))
    if not texts:
        raise CLIError(f"{name} has no records")
    return texts, (titles if any(t is not None for t in titles) else None), (ids if has_ids else None)


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _output_format(args) -> str:
    """The output format, from --format or the --output extension; checked before embedding."""
    if args.format:
        fmt = args.format
    elif args.output:
        fmt = EXTENSION_FORMATS.get(Path(args.output).suffix.lower())
        if fmt is None:
            raise CLIError(f"cannot tell the output format from {args.output!r}; name it .jsonl, .npy or .csv, "
                           "or pass --format jsonl|npy|csv")
    else:
        fmt = "jsonl"
    if args.output:
        parent = Path(args.output).resolve().parent
        if not parent.is_dir():
            raise CLIError(f"cannot write --output {args.output}: folder {parent} does not exist")
        try:
            refuse_existing(args.output, args.force, option="--output")
        except OutputExistsError as exc:
            raise CLIError(str(exc)) from None
    elif fmt == "npy" and sys.stdout.isatty():
        raise CLIError("not writing binary .npy to a terminal; pass --output FILE.npy or redirect stdout")
    return fmt


def _load_embedder(model: str | None, *, threads: int | None, verify: bool):
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise CLIError(f"no model: pass --model DIR (an artifact folder) or set {MODEL_ENV}=DIR")
    from runtime import ArtifactError, Embedder

    try:
        return Embedder(model, threads=threads, verify=verify)
    except ArtifactError as exc:
        raise CLIError(str(exc)) from None


def _encode(emb, args, texts: list[str], titles: list[str | None] | None):
    """Check --dim and the prompt against the model, then embed (truncation warnings to stderr)."""
    from runtime import PromptError, TextTooLongError, TruncationWarning

    if args.dim is not None and args.dim not in emb.dims:
        raise CLIError(f"--dim {args.dim} is not a size of this model; choose one of {', '.join(map(str, emb.dims))}")
    try:
        emb.prompted(texts[:1], args.prompt_name, prompt=args.prompt, titles=titles and titles[:1])
    except PromptError as exc:
        where = {"titles": 'the input\'s "title" fields', "prompt": "--prompt"}.get(exc.field, "--prompt-name / --task")
        raise CLIError(f"{where}: {exc}") from None

    show = args.progress
    if show is None:
        show = (len(texts) >= PROGRESS_MIN_TEXTS and sys.stderr is not None and sys.stderr.isatty()
                and importlib.util.find_spec("tqdm") is not None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vectors = emb.encode(texts, args.prompt_name, prompt=args.prompt, titles=titles, dim=args.dim,
                                 normalize=not args.no_normalize, batch_size=args.batch_size,
                                 truncate=not args.no_truncate, show_progress=show)
        except TextTooLongError as exc:
            raise CLIError(f"{len(exc.indices)} text(s) exceed {exc.limit} tokens (first: texts[{exc.indices[0]}]); "
                           "texts are numbered from 0 in input order (drop --no-truncate to cut long texts "
                           "instead)") from None
    for w in caught:
        if isinstance(w.message, TruncationWarning):
            cut = w.message
            print(f"warning: {len(cut.indices)} of {cut.total} text(s) exceed {cut.limit} tokens and were truncated "
                  f"(first: texts[{cut.indices[0]}]); --no-truncate makes this an error", file=sys.stderr)
        else:
            print(f"warning: {w.message}", file=sys.stderr)
    return vectors


def _write(vectors, fmt: str, output: str | None, texts: list[str], ids: list | None) -> None:
    """Write the vectors to ``output`` (or stdout) as jsonl, npy or csv."""
    import numpy as np

    try:
        if output is None:
            stream = sys.stdout.buffer
            _write_to(stream, vectors, fmt, texts, ids, np)
            stream.flush()
        else:
            with replaced_atomically(output) as tmp, open(tmp, "wb") as stream:
                _write_to(stream, vectors, fmt, texts, ids, np)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CLIError(f"cannot write {output or 'stdout'}: {exc.strerror or exc}") from None


def _write_to(stream, vectors, fmt: str, texts, ids, np) -> None:
    if fmt == "npy":
        np.save(stream, vectors)
    elif fmt == "csv":
        # 9 significant digits round-trip float32 exactly.
        for row in vectors:
            stream.write((",".join(format(float(x), ".9g") for x in row) + "\n").encode("ascii"))
    else:
        key, labels = ("id", ids) if ids is not None else ("text", texts)
        for i, (label, row) in enumerate(zip(labels, vectors)):
            # float32 -> Python float is exact, so the JSON round-trips to the same float32.
            line = json.dumps({"index": i, key: label, "embedding": row.tolist()}, ensure_ascii=False)
            stream.write(line.encode("utf-8") + b"\n")


if __name__ == "__main__":
    sys.exit(main())
