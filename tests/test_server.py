"""The OpenAI-compatible server, run for real with uvicorn on 127.0.0.1 and queried with the official
``openai`` client: vectors equal runtime.Embedder's, every bad input gets an OpenAI-shaped 4xx,
concurrent requests are batched together (proved by counters, never by timing)."""
from __future__ import annotations

import asyncio
import base64
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import uvicorn  # noqa: E402

from runtime import Embedder  # noqa: E402
from serve.app import create_app  # noqa: E402
from serve.batcher import Batcher, length_groups  # noqa: E402
from serve.limits import ServerLimits  # noqa: E402

# The server truncates long texts on purpose; the runtime's warning about it is not news here.
pytestmark = pytest.mark.filterwarnings("ignore::runtime.TruncationWarning")

ROOT = Path(__file__).parents[1]
MAX_BODY = 64 * 1024
MAX_TEXTS = 64
MAX_TOKENS_PER_TEXT = 200
MAX_TOKENS_PER_REQUEST = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, limit: float = 60.0):
    """Poll until ``predicate()`` is true; the limit only turns a hang into a failure, it is not measured."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class _Server:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        self.app = app
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        _wait_for(lambda: self.server.started or not self.thread.is_alive(), "server start")
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def emb(tiny_artifact):
    return Embedder(tiny_artifact, threads=1)


@pytest.fixture(scope="module")
def server(tiny_artifact, emb):
    # Two names: one given as an Embedder, one as a folder (loaded by create_app).
    limits = ServerLimits(max_texts_per_request=MAX_TEXTS, max_body_bytes=MAX_BODY,
                          max_tokens_per_text=MAX_TOKENS_PER_TEXT, max_tokens_per_request=MAX_TOKENS_PER_REQUEST,
                          max_batch_texts=16)
    app = create_app({"gemma": emb, "gemma-b": tiny_artifact}, default="gemma", threads=1, limits=limits)
    with _Server(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=60) as c:
        yield c


def _cos(a, b) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.asarray([d.embedding for d in response.data], dtype=np.float32)


TEXTS = ["Which planet is known as the Red Planet?", "Mars is red because of iron oxide.", "ünïcödé ✓ 火星",
         "a"]


def test_float_and_base64_equal_embedder(client, emb):
    expected = emb.encode(TEXTS, prompt_name="query")
    r = client.embeddings.create(model="gemma", input=TEXTS, encoding_format="float",
                                 extra_body={"prompt_name": "query"})
    assert r.object == "list" and r.model == "gemma" and r.data[0].object == "embedding"
    assert np.all(_cos(_vectors(r), expected) >= 0.99999)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(emb.count_tokens(TEXTS, prompt_name="query"))

    # Explicit base64: the client hands back the string; it is little-endian float32 bytes.
    r = client.embeddings.create(model="gemma", input=TEXTS, encoding_format="base64",
                                 extra_body={"prompt_name": "query"})
    decoded = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in r.data])
    assert np.all(_cos(decoded, expected) >= 0.99999)

    # No encoding_format: the openai client asks for base64 itself and decodes it.
    r = client.embeddings.create(model="gemma", input=TEXTS[0], extra_body={"task": "query"})
    assert np.all(_cos(_vectors(r), expected[:1]) >= 0.99999)


def test_dimensions_and_extensions(client, emb):
    for dim in emb.dims:
        r = client.embeddings.create(model="gemma", input=TEXTS, dimensions=dim, encoding_format="float")
        got = _vectors(r)
        assert got.shape == (len(TEXTS), dim)
        assert np.all(_cos(got, emb.encode(TEXTS, dim=dim)) >= 0.99999)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    r = client.embeddings.create(model="gemma", input=TEXTS, encoding_format="float",
                                 extra_body={"titles": ["Mars", None, "", "T"]})
    assert np.all(_cos(_vectors(r), emb.encode_document(TEXTS, titles=["Mars", None, "", "T"])) >= 0.99999)

    r = client.embeddings.create(model="gemma", input=TEXTS[1], encoding_format="float", dimensions=32,
                                 extra_body={"title": "Mars", "prompt_name": "Retrieval-document"})
    assert np.all(_cos(_vectors(r), emb.encode_document([TEXTS[1]], titles="Mars", dim=32)) >= 0.99999)

    raw = _vectors(client.embeddings.create(model="gemma", input=TEXTS, encoding_format="float",
                                            extra_body={"normalize": False, "prompt_name": "STS"}))
    expected = emb.encode(TEXTS, prompt_name="STS", normalize=False)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)

    long_text = "word " * 30  # 152 tokens: over the tiny model's 64, under the server's 200-token cap
    r = client.embeddings.create(model="gemma", input=[long_text], encoding_format="float", extra_body={"truncate": True})
    with pytest.warns(UserWarning):
        expected = emb.encode([long_text])
    assert np.all(_cos(_vectors(r), expected) >= 0.99999)
    assert r.usage.prompt_tokens == emb.max_seq_length


def test_two_models_aliases_and_model_list(client, http, emb):
    r = client.embeddings.create(model="gemma-b", input="hello", encoding_format="float")
    assert r.model == "gemma-b"
    assert np.all(_cos(_vectors(r), emb.encode(["hello"])) >= 0.99999)
    for alias in ("embeddinggemma", "default", "google/embeddinggemma-300m"):
        assert client.embeddings.create(model=alias, input="hello").model == "gemma"
    assert http.post("/v1/embeddings", json={"input": "hello"}).json()["model"] == "gemma"  # model omitted

    models = client.models.list()
    assert [m.id for m in models.data] == ["gemma", "gemma-b"]
    card = http.get("/v1/models").json()["data"][0]
    assert card["object"] == "model" and card["variant"] == emb.variant
    assert card["dims"] == list(emb.dims) and card["max_seq_length"] == emb.max_seq_length and card["default"]
    assert client.models.retrieve("gemma-b").id == "gemma-b"
    health = http.get("/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"gemma", "gemma-b"}


BAD_REQUESTS = [
    # (json body or raw bytes, status, param, message fragment)
    ({"input": []}, 400, "input", "'input' is an empty list"),
    ({"input": ""}, 400, "input", "'input' is an empty string"),
    ({"input": ["ok", ""]}, 400, "input", "input[1] is an empty string"),
    ({"input": [101, 102, 103]}, 400, "input", "'input' is an array of token ids; this server embeds text only"),
    ({"input": ["ok", [1, 2]]}, 400, "input", "input[1] is an array of token ids"),
    ({"input": ["ok", None]}, 400, "input", "input[1] is null, expected a string"),
    ({"input": {"text": "x"}}, 400, "input", "'input' must be a string or a list of strings, got an object"),
    ({"model": "gemma"}, 400, "input", "Missing required parameter: 'input'"),
    ({"input": "x", "dimensions": 100}, 400, "dimensions", "Model 'gemma' supports 64, 32, 16"),
    ({"input": "x", "dimensions": "32"}, 400, "dimensions", "Invalid value for 'dimensions'"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "'float' or 'base64'"),
    ({"input": "x", "normalize": "yes"}, 400, "normalize", "Invalid value for 'normalize'"),
    ({"input": "x", "model": "text-embedding-3-small"}, 404, "model",
     "The model 'text-embedding-3-small' does not exist. This server serves: gemma, gemma-b"),
    ({"input": "x", "prompt_name": "nope"}, 400, "prompt_name",
     "Unknown prompt name 'nope'; this model has: Classification, Clustering"),
    ({"input": "x", "task": "query", "prompt_name": "STS"}, 400, "task", "'task' ('query') and 'prompt_name' ('STS') disagree"),
    ({"input": "x", "titles": ["a", "b"]}, 400, "titles", "Got 2 titles for 1 texts"),
    ({"input": "x", "title": "T", "prompt_name": "query"}, 400, "titles", "has no 'title: none' slot"),
    ({"input": "x", "task": "nope"}, 400, "task", "Unknown prompt name 'nope'"),
    ({"input": "x", "title": "T", "prompt": "p: "}, 400, "titles", "cannot be used with a literal prompt"),
    ({"input": ["ok", "word " * 30], "truncate": False}, 400, "input",
     "input[1] has 152 tokens (with its prompt), more than model 'gemma' takes (64). Shorten it, or send"),
    ({"input": ["ok", "word " * 300]}, 400, "input", "input[1] has 1502 tokens (with its prompt); this server accepts at most 200"),
    ({"input": ["word " * 30] * 20}, 400, "input",
     f"'input' has 1280 tokens in all (with prompts, after truncation); this server takes at most {MAX_TOKENS_PER_REQUEST}"),
    ({"input": ["x"] * (MAX_TEXTS + 1)}, 400, "input", f"'input' has {MAX_TEXTS + 1} texts; this server takes at most {MAX_TEXTS}"),
    (b'{"input": "x",', 400, None, "We could not parse the JSON body"),
    (b"[1, 2]", 400, None, "The request body must be a JSON object, got an array"),
    (b"", 400, None, "The request body is empty"),
    ({"input": "x" * (MAX_BODY + 10)}, 413, None, f"this server accepts at most {MAX_BODY} bytes"),
]


@pytest.mark.parametrize("body, status, param, message", BAD_REQUESTS,
                         ids=[f"{i}-{b[2]}-{b[1]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_openai_errors(http, body, status, param, message):
    if isinstance(body, bytes):
        r = http.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    else:
        r = http.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert http.get("/health").json()["status"] == "ok"


def test_errors_reach_the_openai_client_and_odd_requests(client, http):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="nope", input="x")
    assert info.value.status_code == 404 and "does not exist" in info.value.message
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="Model 'gemma' supports 64, 32, 16"):
        client.embeddings.create(model="gemma", input="x", dimensions=48)

    # A chunked body (no Content-Length) over the limit is cut off with 413, too.
    r = http.post("/v1/embeddings", content=iter([b"x" * 16384] * 8), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most" in r.json()["error"]["message"]
    r = http.post("/v1/embeddings", content=b'{"input": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"]
    r = http.get("/v1/embeddings")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = http.get("/v2/nothing")
    assert r.status_code == 404 and "Unknown path" in r.json()["error"]["message"]
    assert http.get("/health").status_code == 200


def test_concurrent_requests_get_their_own_vectors_in_order(server, emb):
    rng = np.random.default_rng(0)
    words = "planet moon star orbit red gas giant ring dust ice rock comet sun light".split()
    jobs = []
    for k in range(48):
        n = int(rng.integers(1, 9))
        texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) + f" #{k}.{i}" for i in range(n)]
        prompt = ["query", "document", "STS", None][k % 4]
        dim = emb.dims[k % len(emb.dims)]
        jobs.append((texts, prompt, dim))

    def call(job):
        texts, prompt, dim = job
        c = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
        extra = {"prompt_name": prompt} if prompt else {}
        return _vectors(c.embeddings.create(model="gemma", input=texts, dimensions=dim, extra_body=extra))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for (texts, prompt, dim), got in zip(jobs, results):
        expected = emb.encode(texts, prompt_name=prompt, dim=dim)
        assert got.shape == expected.shape
        assert np.all(_cos(got, expected) >= 0.99999)


def test_cross_request_batching_happens(server, emb):
    batcher: Batcher = server.app.state.models["gemma"].batcher
    before = batcher.stats
    texts = [[f"request {k} text {i}" for i in range(3)] for k in range(4)]

    def call(batch):
        with httpx.Client(base_url=server.base, timeout=60) as c:
            return c.post("/v1/embeddings", json={"input": batch, "model": "gemma"}).json()

    # Hold the worker so the four requests are all queued; released, they must share a batch.
    with ThreadPoolExecutor(4) as pool:
        with batcher.paused():
            futures = [pool.submit(call, t) for t in texts]
            _wait_for(lambda: batcher.stats["queued_requests"] == 4, "4 queued requests")
        responses = [f.result() for f in futures]
    after = batcher.stats
    assert after["cross_request_batches"] > before["cross_request_batches"]
    assert after["max_requests_in_batch"] >= 4
    for batch, resp in zip(texts, responses):
        got = np.asarray([d["embedding"] for d in resp["data"]], dtype=np.float32)
        assert np.all(_cos(got, emb.encode(batch)) >= 0.99999)


class _RecordingEmbedder:
    """Stands in for Embedder in batcher unit tests: records each batch; row = a number per text."""

    dim = 2

    def __init__(self):
        self.batches: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.batches.append(list(texts))
        return np.asarray([[float(t.split(":")[1]), 0.0] for t in texts], dtype=np.float32)


@pytest.mark.parametrize("cross_request", [True, False])
def test_big_request_is_interleaved_round_robin(cross_request):
    fake = _RecordingEmbedder()
    batcher = Batcher(fake, max_batch_texts=4, cross_request=cross_request)

    async def scenario():
        with batcher.paused():
            big = batcher.submit([f"big:{i}" for i in range(12)], [1] * 12)[0]
            small = [batcher.submit([f"s{k}:{k}"], [1])[0] for k in range(3)]
            done_order = []
            for name, fut in [("big", big)] + [(f"s{k}", f) for k, f in enumerate(small)]:
                fut.add_done_callback(lambda _f, name=name: done_order.append(name))
        results = await asyncio.gather(big, *small)
        return done_order, results

    try:
        done_order, results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [r[:, 0].tolist() for r in results] == [list(map(float, range(12))), [0.0], [1.0], [2.0]]
    if cross_request:
        # Round-robin, one text per request per turn: the small ones ride in the first batch.
        assert fake.batches[0] == ["big:0", "s0:0", "s1:1", "s2:2"]
        assert done_order[:3] == ["s0", "s1", "s2"] and done_order[-1] == "big"
        assert batcher.stats["cross_request_batches"] >= 1
    else:
        # Baseline: a batch holds one request's texts, requests take turns by chunk.
        assert fake.batches[:4] == [["big:0", "big:1", "big:2", "big:3"], ["s0:0"], ["s1:1"], ["s2:2"]]
        assert batcher.stats["cross_request_batches"] == 0


def test_token_budget_and_cancelled_requests():
    fake = _RecordingEmbedder()
    batcher = Batcher(fake, max_batch_texts=100, max_batch_tokens=10)

    async def scenario():
        with batcher.paused():
            a, handle = batcher.submit([f"a:{i}" for i in range(6)], [4] * 6)
            b = batcher.submit(["b:1"], [4])[0]
            batcher.cancel(handle)  # its client went away before anything ran
            a.cancel()
        return await b

    try:
        assert asyncio.run(scenario())[:, 0].tolist() == [1.0]
    finally:
        batcher.close()
    assert fake.batches == [["b:1"]]
    assert batcher.stats["pending_texts"] == 0 and batcher.stats["cancelled_requests"] == 1

    fake = _RecordingEmbedder()
    batcher = Batcher(fake, max_batch_texts=100, max_batch_tokens=10)

    async def budget():
        with batcher.paused():
            fut = batcher.submit([f"x:{i}" for i in range(5)], [4] * 5)[0]
        return await fut

    try:
        asyncio.run(budget())
    finally:
        batcher.close()
    assert [len(b) for b in fake.batches] == [2, 2, 1]  # 4+4 <= 10 < 4+4+4


def test_length_groups_keep_padding_small():
    # A mixed batch runs as groups of similar length: long documents apart from short queries.
    assert length_groups([15, 190, 12, 20, 180, 14]) == [[1, 4], [3, 0, 5, 2]]
    assert length_groups([7]) == [[0]] and length_groups([]) == []
    assert length_groups([30, 1, 1]) == [[0, 1, 2]]  # 58 padding tokens: cheap enough to share a run
    fake = _RecordingEmbedder()
    batcher = Batcher(fake, max_batch_texts=8)

    async def scenario():
        with batcher.paused():
            futures = [batcher.submit([f"q:{i}"], [10])[0] for i in range(3)] + [batcher.submit(["d:9"], [300])[0]]
        return await asyncio.gather(*futures)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close()
    assert [r[0, 0] for r in results] == [0.0, 1.0, 2.0, 9.0]
    assert fake.batches == [["d:9"], ["q:0", "q:1", "q:2"]]  # one worker batch, two inference runs
    assert batcher.stats["batches"] == 1 and batcher.stats["inference_runs"] == 2


def test_sigterm_finishes_in_flight_requests(tiny_artifact, emb):
    """`embeddinggemma serve` in a subprocess: SIGTERM during a request still delivers it, exit code 0."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve", "--model", f"tiny={tiny_artifact}", "--port", str(port),
         "--threads", "1", "--max-batch-texts", "8", "--no-verify", "--log-level", "info", "--no-access-log"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                return httpx.get(base + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False
        _wait_for(up, "the server subprocess")
        texts = [f"text number {i} " + "word " * (i % 40) for i in range(600)]
        result = {}

        def call():
            result["r"] = httpx.post(base + "/v1/embeddings", json={"input": texts, "dimensions": 16}, timeout=120)

        caller = threading.Thread(target=call)
        caller.start()
        # Send SIGTERM once the request is in the server's queue (or already answered: still a valid run).
        _wait_for(lambda: "r" in result or
                  httpx.get(base + "/health", timeout=5).json()["models"]["tiny"]["requests"] >= 1, "request queued")
        proc.send_signal(signal.SIGTERM)
        caller.join(120)
        r = result["r"]
        assert r.status_code == 200
        got = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        with pytest.warns(UserWarning):
            expected = emb.encode(texts, dim=16)
        assert got.shape == (600, 16) and np.all(_cos(got, expected) >= 0.99999)
        _, err = proc.communicate(timeout=60)
        # uvicorn re-raises the signal after its graceful shutdown, so the status is "terminated by SIGTERM".
        assert proc.returncode in (0, -signal.SIGTERM), err.decode()
        assert "Application shutdown complete" in err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
