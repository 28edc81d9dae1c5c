"""``embeddinggemma serve`` (and ``python -m serve``): the OpenAI-compatible server's command line.

Registered with the ``embeddinggemma`` command through the ``embeddinggemma.commands`` entry point.
Only the standard library is imported here; FastAPI and uvicorn (the ``serve`` extra) only when the
command runs, so a missing extra is reported with the line that installs it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from runtime.cli import MODEL_ENV, CLIError, install_hint, positive_int, run_standalone

SERVE_EXTRA_HINT = install_hint("serve")

EXAMPLES = f"""examples:
  embeddinggemma serve --model artifacts/fp32
  embeddinggemma serve --model gemma=artifacts/fp32 --model gemma-q4=artifacts/q4_0 --default gemma \\
      --host 127.0.0.1 --port 8000 --threads 4 --max-batch-texts 64

  # then, with the official client (any OpenAI-compatible client works):
  #   from openai import OpenAI
  #   client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
  #   client.embeddings.create(model="gemma", input=["red planet"], dimensions=256,
  #                            extra_body={{"prompt_name": "query"}})

--model DIR serves the folder under its own name (e.g. fp32); NAME=DIR names it. The first model
is the default: requests naming no model, "default" or "embeddinggemma" get it.
Needs the serve extra: {SERVE_EXTRA_HINT}. There is no authentication: keep --host on loopback
or put a proxy in front. SIGINT/SIGTERM finish in-flight requests before exiting.
"""

DESCRIPTION = ("Serve artifact folders over HTTP with OpenAI's /v1/embeddings API\n"
               "(FastAPI + uvicorn; concurrent requests are batched together).")


def add_command(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``embeddinggemma`` command's subparsers (the entry point's target)."""
    parser = subparsers.add_parser("serve", help="OpenAI-compatible /v1/embeddings server", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options (their defaults are ``serve.app.ServerLimits``')."""
    from .limits import ServerLimits

    d = ServerLimits()
    parser.add_argument("--model", action="append", metavar="[NAME=]DIR",
                        help=f"artifact folder to serve; repeat for several (default: ${MODEL_ENV})")
    parser.add_argument("--default", metavar="NAME", help="model for requests that name none (default: the first)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="onnxruntime threads per model (default: all cores)")
    parser.add_argument("--max-batch-texts", type=positive_int, default=d.max_batch_texts, metavar="N",
                        help=f"texts per inference batch, across requests (default {d.max_batch_texts}; "
                             "1 = no batching)")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=d.max_batch_tokens, metavar="N",
                        help=f"tokens per inference batch, across requests (default {d.max_batch_tokens}; "
                             "one text always fits)")
    parser.add_argument("--max-texts-per-request", type=positive_int, default=d.max_texts_per_request, metavar="N",
                        help=f"larger requests get 400 (default {d.max_texts_per_request}, as OpenAI)")
    parser.add_argument("--max-tokens-per-text", type=positive_int, metavar="N",
                        help="texts with more tokens get 400 even when truncating (default: no limit)")
    parser.add_argument("--max-tokens-per-request", type=positive_int, default=d.max_tokens_per_request,
                        metavar="N", help="requests with more tokens in all get 400 "
                                          f"(default {d.max_tokens_per_request}, as OpenAI)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=d.max_body_bytes, metavar="N",
                        help=f"larger request bodies get 413 (default {d.max_body_bytes >> 20} MiB)")
    parser.add_argument("--max-pending-texts", type=positive_int, default=d.max_pending_texts, metavar="N",
                        help=f"texts allowed to wait per model before requests get 503 (default {d.max_pending_texts})")
    parser.add_argument("--no-cross-request-batching", action="store_true",
                        help="batch each request on its own (a baseline for load tests)")
    parser.add_argument("--default-prompt-name", metavar="NAME",
                        help="prompt for requests that name none (default: none, as the model)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact files")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")
    parser.set_defaults(func=serve_command)


def serve_command(args) -> int:
    """Load the models named by ``args`` and serve them until SIGINT/SIGTERM."""
    specs = args.model or ([os.environ[MODEL_ENV]] if os.environ.get(MODEL_ENV) else None)
    if not specs:
        raise CLIError(f"no model: pass --model DIR (repeatable, NAME=DIR to name it) or set {MODEL_ENV}=DIR")
    try:
        from .app import create_app, parse_model_specs, run
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise CLIError(f"the server needs FastAPI and uvicorn ({missing} is not installed): "
                           f"{SERVE_EXTRA_HINT}") from None
        raise
    if importlib.util.find_spec("uvicorn") is None:
        raise CLIError(f"the server needs FastAPI and uvicorn (uvicorn is not installed): {SERVE_EXTRA_HINT}")
    from runtime import ArtifactError

    from .limits import ServerLimits

    try:
        models = parse_model_specs(specs)
        for name, folder in models.items():
            if not Path(folder).is_dir():
                raise CLIError(f"model {name!r}: artifact folder {folder!r} does not exist or is not a folder")
        print(f"loading {', '.join(f'{n} ({f})' for n, f in models.items())} ...", file=sys.stderr)
        limits = ServerLimits(
            max_batch_texts=args.max_batch_texts, max_batch_tokens=args.max_batch_tokens,
            max_texts_per_request=args.max_texts_per_request, max_tokens_per_text=args.max_tokens_per_text,
            max_tokens_per_request=args.max_tokens_per_request, max_body_bytes=args.max_body_bytes,
            max_pending_texts=args.max_pending_texts, cross_request_batching=not args.no_cross_request_batching)
        app = create_app(models, args.default, limits=limits, threads=args.threads, verify=not args.no_verify,
                         default_prompt_name=args.default_prompt_name)
    except (ArtifactError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}; the server has no authentication", file=sys.stderr)
    try:
        run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=not args.no_access_log)
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind the port (it has logged why)
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m serve ...``, the same as ``embeddinggemma serve ...``."""
    return run_standalone("embeddinggemma serve", add_arguments, DESCRIPTION, EXAMPLES, argv)
