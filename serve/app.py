"""An OpenAI-compatible embeddings server on the torch-free runtime (FastAPI + uvicorn).

    from serve.app import create_app
    app = create_app({"embeddinggemma": "artifacts/fp32", "q4": "artifacts/q4_0"}, default="embeddinggemma")
    # uvicorn.run(app, host="127.0.0.1", port=8000)   or: embeddinggemma serve --model artifacts/fp32

Endpoints: POST /v1/embeddings (OpenAI request/response shapes plus documented extensions),
GET /v1/models, GET /v1/models/{id}, GET /health. Every error is OpenAI-shaped JSON with a 4xx
status. Each model has one worker thread (``serve.batcher.Batcher``) that batches texts across
concurrent requests; inference never runs on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import Embedder, PromptError, __version__
from runtime.artifact import MANIFEST_NAME
from runtime.prompts import with_prompts
from runtime.vectors import finish

from .batcher import Batcher, BatcherBusy, BatcherClosed
from .errors import INVALID_REQUEST, APIError, error_body, json_type, validation_message
from .limits import ServerLimits

log = logging.getLogger("serve")

# Names that mean "the default model" unless a served model is called that. OpenAI's API requires a
# model name, so clients written for it always send one; these let them send the obvious one.
DEFAULT_ALIASES = ("default", "embeddinggemma", "embeddinggemma-300m", "google/embeddinggemma-300m")
DEFAULT_LIMITS = ServerLimits()


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings body: OpenAI's fields, then this server's extensions.

    Strict types (no "256" for 256, no 1 for true) so a client bug is reported, not guessed at.
    Unknown fields are ignored, as OpenAI's clients may send newer ones (e.g. ``user``).
    """

    model_config = ConfigDict(strict=True, extra="ignore")

    input: Any                                  # checked by hand for precise messages (token ids, index)
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # extensions
    prompt_name: str | None = None
    task: str | None = None                     # alias of prompt_name
    prompt: str | None = None                   # literal prefix instead of a named prompt
    title: str | None = None                    # document title, for every text of the request
    titles: list[str | None] | None = None      # one document title (or null) per text
    normalize: bool = True
    truncate: bool = True


@dataclass
class ServedModel:
    """A model as served: its name, Embedder, batcher and an untruncated token counter."""

    name: str
    embedder: Embedder
    batcher: Batcher
    count_tokens: Callable[[list[str]], list[int]]
    created: int
    truncated_texts: int = 0  # texts cut to max_seq_length so far (reported by /health)


def _untruncated_counter(embedder: Embedder) -> Callable[[list[str]], list[int]]:
    """Full token counts of prompt-prefixed texts *before* truncation, to name too-long texts."""
    return lambda texts: embedder.count_tokens(texts, prompt="", truncate=False)


def create_app(
    models: Mapping[str, Embedder | str | os.PathLike],
    default: str | None = None,
    *,
    limits: ServerLimits = DEFAULT_LIMITS,
    aliases: tuple[str, ...] = DEFAULT_ALIASES,
    default_prompt_name: str | None = None,
    threads: int | None = None,
    verify: bool = True,
) -> FastAPI:
    """Build the ASGI app serving ``models`` ({name: Embedder or artifact folder}).

    default: the model used when a request names none or one of ``aliases`` (default: the first).
    limits: batch sizes, request caps and queue depth (``ServerLimits``). default_prompt_name: prompt
    applied when a request names none (default: the model's own default, which for EmbeddingGemma is
    no prompt). threads, verify: passed to ``Embedder`` for models given as folders.
    """
    served = _load_models(models, limits, default_prompt_name, threads, verify)
    default = default if default is not None else next(iter(served))
    if default not in served:
        raise ValueError(f"default model {default!r} is not among the served models: {', '.join(served)}")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in served.values():
            m.batcher.start()
        names = ", ".join(f"{n} [{m.embedder.variant}]" for n, m in served.items())
        log.info("serving %s (default %s)", names, default)
        yield
        # uvicorn has already waited for in-flight requests; closing still drains anything queued,
        # in a thread so the event loop stays free to deliver those last results.
        await asyncio.gather(*(asyncio.to_thread(m.batcher.close) for m in served.values()))

    app = FastAPI(title="EmbeddingGemma embeddings (OpenAI-compatible)", version=__version__, lifespan=lifespan)
    app.state.models = served
    app.state.default_model = default
    app.state.limits = limits.as_dict()
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    _install_error_handlers(app)

    def resolve_model(name: str | None) -> ServedModel:
        if name is None or (name not in served and name in aliases):
            return served[default]
        if name not in served:
            raise APIError(404, f"The model '{name}' does not exist. This server serves: {', '.join(served)} "
                                f"(or omit 'model' for the default, {default}).",
                           param="model", code="model_not_found")
        return served[name]

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> Response:
        """Embed ``input`` (a string or a list of strings) the way OpenAI's /v1/embeddings does."""
        m = resolve_model(body.model)
        texts = _check_input(body.input, limits.max_texts_per_request)
        dim = m.embedder.dim if body.dimensions is None else body.dimensions
        if dim not in m.embedder.dims:
            raise APIError(400, f"Invalid value for 'dimensions': {dim}. Model '{m.name}' supports "
                                f"{', '.join(map(str, m.embedder.dims))} (Matryoshka sizes).", param="dimensions")
        prefixed = _apply_prompts(body, texts, m.embedder, default_prompt_name)
        # Tokenizing a few thousand texts takes milliseconds, but it is still CPU work: off the loop.
        counts = await run_in_threadpool(m.count_tokens, prefixed)
        used = _token_budget(m, counts, body.truncate, limits)
        raw = await _embed(m, prefixed, used)
        return _embedding_response(m.name, finish(raw, dim, body.normalize), body.encoding_format, sum(used))

    def model_card(m: ServedModel) -> dict:
        emb = m.embedder
        return {"id": m.name, "object": "model", "created": m.created, "owned_by": "embeddinggemma-onnx",
                "variant": emb.variant, "dim": emb.dim, "dims": list(emb.dims),
                "max_seq_length": emb.max_seq_length, "prompts": sorted(emb.prompts),
                "default": m.name == default}

    @app.get("/v1/models")
    async def list_models() -> dict:
        """OpenAI's model list, each entry with this server's metadata (variant, dims, max_seq_length)."""
        return {"object": "list", "data": [model_card(m) for m in served.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        """One model's card (OpenAI's retrieve-model call); aliases resolve to the default model."""
        return model_card(resolve_model(model_id))

    @app.get("/health")
    async def health() -> dict:
        """Liveness plus each model's batcher counters (queue depth, batches, cross-request batches)."""
        return {"status": "ok", "default_model": default,
                "models": {n: {"variant": m.embedder.variant, "truncated_texts": m.truncated_texts, **m.batcher.stats}
                           for n, m in served.items()}}

    return app


def _load_models(models: Mapping[str, Embedder | str | os.PathLike], limits: ServerLimits,
                 default_prompt_name: str | None, threads: int | None, verify: bool) -> dict[str, ServedModel]:
    """Each model loaded (folders through ``Embedder``), checked against the default prompt, with its batcher."""
    if not models:
        raise ValueError("create_app needs at least one model")
    served: dict[str, ServedModel] = {}
    for name, value in models.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
        emb = value if isinstance(value, Embedder) else Embedder(value, threads=threads, verify=verify)
        if default_prompt_name is not None and default_prompt_name not in emb.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not a prompt of model {name!r}; "
                             f"it has: {', '.join(sorted(emb.prompts))}")
        manifest_path = emb.path / MANIFEST_NAME
        created = int(manifest_path.stat().st_mtime) if manifest_path.exists() else 0
        batcher = Batcher(emb, name=name, max_batch_texts=limits.max_batch_texts,
                          max_batch_tokens=limits.max_batch_tokens, max_pending_texts=limits.max_pending_texts,
                          cross_request=limits.cross_request_batching)
        served[name] = ServedModel(name, emb, batcher, _untruncated_counter(emb), created)
    return served


def _token_budget(m: ServedModel, counts: list[int], truncate: bool, limits: ServerLimits) -> list[int]:
    """The tokens the model reads per text (after truncation), or an APIError for a text or request
    over its limit; counts the truncated texts for /health."""
    limit = m.embedder.max_seq_length
    for i, n in enumerate(counts):
        if limits.max_tokens_per_text is not None and n > limits.max_tokens_per_text:
            raise APIError(400, f"input[{i}] has {n} tokens (with its prompt); this server accepts at most "
                                f"{limits.max_tokens_per_text} tokens per text.", param="input",
                           code="context_length_exceeded")
        if not truncate and n > limit:
            raise APIError(400, f"input[{i}] has {n} tokens (with its prompt), more than model '{m.name}' "
                                f"takes ({limit}). Shorten it, or send \"truncate\": true to cut it to "
                                f"{limit} tokens.", param="input", code="context_length_exceeded")
    used = [min(n, limit) for n in counts]
    if limits.max_tokens_per_request is not None and sum(used) > limits.max_tokens_per_request:
        raise APIError(400, f"'input' has {sum(used)} tokens in all (with prompts, after truncation); this "
                            f"server takes at most {limits.max_tokens_per_request} per request. Split it into "
                            "several requests.", param="input", code="max_tokens_per_request")
    m.truncated_texts += sum(n > limit for n in counts)
    return used


async def _embed(m: ServedModel, prefixed: list[str], used: list[int]):
    """Raw full-size vectors from the model's batcher; 503 when it is full or closing, 500 when
    inference fails; a client that disconnects cancels its remaining texts."""
    try:
        future, handle = m.batcher.submit(prefixed, used)
    except BatcherBusy as exc:
        raise APIError(503, str(exc), type="server_error", code="server_overloaded") from None
    except BatcherClosed as exc:
        raise APIError(503, str(exc), type="server_error", code="shutting_down") from None
    try:
        return await future
    except asyncio.CancelledError:
        m.batcher.cancel(handle)  # the client disconnected: do not embed the rest for nobody
        raise
    except Exception as exc:  # noqa: BLE001 - inference failed: report it, keep serving
        log.exception("embedding failed")
        raise APIError(500, f"inference failed: {type(exc).__name__}: {exc}", type="server_error") from None


def _embedding_response(model: str, vectors, encoding_format: str, tokens: int) -> Response:
    """OpenAI's embeddings response; base64 is the little-endian float32 bytes of each vector."""
    if encoding_format == "base64":
        items = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        items = vectors.tolist()
    payload = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def _check_input(value: Any, max_texts: int) -> list[str]:
    """``input`` as a list of non-empty strings, or an APIError saying exactly what is wrong."""
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        if not value:
            raise APIError(400, "'input' is an empty list; send at least one string.", param="input")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise APIError(400, "'input' is an array of token ids; this server embeds text only, so send a "
                                "string or a list of strings.", param="input")
        texts = value
        for i, v in enumerate(value):
            if isinstance(v, str):
                continue
            if isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
                raise APIError(400, f"input[{i}] is an array of token ids; this server embeds text only, so "
                                    "send strings.", param="input")
            raise APIError(400, f"input[{i}] is {json_type(v)}, expected a string.", param="input")
    else:
        raise APIError(400, f"'input' must be a string or a list of strings, got {json_type(value)}.",
                       param="input")
    if len(texts) > max_texts:
        raise APIError(400, f"'input' has {len(texts)} texts; this server takes at most {max_texts} per "
                            "request. Split it into several requests.", param="input")
    for i, t in enumerate(texts):
        if not t:
            # As OpenAI does: an empty string has no meaning to embed and is usually a client bug.
            where = "'input'" if isinstance(value, str) else f"input[{i}]"
            raise APIError(400, f"{where} is an empty string; send non-empty text.", param="input")
    return texts


def _apply_prompts(body: EmbeddingRequest, texts: list[str], emb: Embedder, server_default: str | None) -> list[str]:
    """Each text with its prompt (and document title) in front by the runtime's rule
    (``runtime.prompts.with_prompts``), with the request's fields named in the errors.

    Done here rather than in the worker so requests with different prompts can share a batch.
    """
    name = body.prompt_name
    if body.task is not None:
        if name is not None and name != body.task:
            raise APIError(400, f"'task' ({body.task!r}) and 'prompt_name' ({name!r}) disagree; send one of them.",
                           param="task")
        name = body.task
    if body.title is not None and body.titles is not None:
        raise APIError(400, "Send 'title' (one for all texts) or 'titles' (one per text), not both.", param="titles")
    titles = body.titles if body.titles is not None else (
        [body.title] * len(texts) if body.title is not None else None)
    try:
        return with_prompts(texts, emb.prompts, prompt_name=name, prompt=body.prompt, titles=titles,
                            default_prompt_name=server_default or emb.default_prompt_name)
    except PromptError as exc:
        param = "task" if exc.field == "prompt_name" and body.prompt_name is None else exc.field
        message = str(exc)
        raise APIError(400, message[:1].upper() + message[1:] + ".", param=param) from None


def _error_response(status: int, message: str, *, param=None, code=None, type=INVALID_REQUEST) -> Response:
    return Response(error_body(message, param=param, code=code, type=type), status_code=status,
                    media_type="application/json")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> Response:
        return _error_response(exc.status, exc.message, param=exc.param, code=exc.code, type=exc.type)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI answers 422 with its own shape; OpenAI clients expect 400 with an error object.
        message, param = validation_message(list(exc.errors()))
        return _error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = (f"Unknown path {request.url.path}; this server has POST /v1/embeddings, GET /v1/models, "
                       "GET /health.")
            code = "unknown_url"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        err_type = INVALID_REQUEST if exc.status_code < 500 else "server_error"
        return _error_response(exc.status_code, message, code=code, type=err_type)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(500, f"internal error: {type(exc).__name__}", type="server_error")


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with an OpenAI-shaped 413, before they are buffered.

    Checks Content-Length up front and also counts the bytes of chunked bodies as they arrive.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return await self._reply(send, 400, "Invalid Content-Length header.")
                if length > self.max_bytes:
                    return await self._reply(send, 413, self._too_large(length))
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside FastAPI's body read; its HTTPException path turns it into our 413.
                    raise StarletteHTTPException(413, self._too_large(None))
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self, length: int | None) -> str:
        size = f"{length} bytes" if length is not None else f"more than {self.max_bytes} bytes"
        return (f"Request body too large ({size}); this server accepts at most {self.max_bytes} bytes. "
                "Send fewer or shorter texts per request.")

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = error_body(message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``--model`` values (``DIR`` or ``NAME=DIR``) as {name: folder}; unnamed folders use their basename."""
    import re

    out: dict[str, str] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
            name, folder = Path(spec.rstrip("/")).name or spec, spec
        if not folder:
            raise ValueError(f"--model {spec!r} has no folder after '='")
        if name in out:
            raise ValueError(f"two models are named {name!r}; name them with --model NAME=DIR")
        out[name] = folder
    return out


def run(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", access_log: bool = True) -> None:
    """Run an app from ``create_app`` with uvicorn until SIGINT/SIGTERM.

    On SIGTERM uvicorn stops accepting connections and waits for in-flight requests (no graceful
    timeout); the app's lifespan then drains each model's queue before the process exits.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            lifespan="on", timeout_graceful_shutdown=None)
    uvicorn.Server(config).run()
