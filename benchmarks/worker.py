"""One measurement in a fresh process: load a system, warm up, time a workload, report peak RSS.

Run by ``benchmarks.run``; prints one JSON object on its last stdout line. A fresh process per
measurement makes load time and peak resident memory honest (nothing cached from another system).
"""
from __future__ import annotations

import json
import resource
import sys
import time


def _load(system: str, path: str, threads: int, options: dict | None = None):
    t0 = time.perf_counter()
    options = options or {}
    if system == "onnx":
        from runtime import Embedder

        model = Embedder(path, threads=threads, verify=False)
        encode = lambda texts, bs: model.encode(texts, batch_size=bs)  # noqa: E731
    elif system == "torch":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(path, device="cpu")
        encode = lambda texts, bs: model.encode(texts, batch_size=bs, show_progress_bar=False)  # noqa: E731
    elif system == "llama.cpp":
        from llama_cpp import Llama

        # One decode takes up to 2,048 tokens (the model's context): a whole short batch, a ~2,000-token text.
        # flash_attn: llama.cpp's own default (auto) turns it on, llama-cpp-python's turns it off (2x slower here).
        model = Llama(model_path=path, embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, flash_attn=True,
                      n_threads=threads, n_threads_batch=threads, verbose=False)

        def encode(texts, bs):
            out = []
            for i in range(0, len(texts), bs):   # the workload's batches, as the other systems get them
                out.extend(model.embed(texts[i:i + bs], normalize=True))
            return out
    elif system == "st-onnx":
        import onnxruntime as ort
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)   # pooling and the Dense heads run in torch
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        model = SentenceTransformer(path, device="cpu", backend="onnx",
                                    model_kwargs={"file_name": options["file_name"], "session_options": so,
                                                  "provider": "CPUExecutionProvider"})
        encode = lambda texts, bs: model.encode(texts, batch_size=bs, show_progress_bar=False)  # noqa: E731
    else:
        raise ValueError(f"unknown system {system!r}")
    return encode, time.perf_counter() - t0


def measure(spec: dict) -> dict:
    """Load ``spec['system']`` from ``spec['path']`` and time workload ``spec['workload']``; with
    ``spec['mode'] == "embed"``, return the vectors of ``spec['texts']`` instead (peer fidelity)."""
    t_import = time.perf_counter()
    encode, load_s = _load(spec["system"], spec["path"], spec["threads"], spec.get("options"))
    texts, bs = list(spec["texts"]), int(spec["batch_size"])
    if spec.get("mode") == "embed":
        return {"vectors": [[float(x) for x in v] for v in encode(texts, bs)]}
    encode(texts[: min(len(texts), 8)], bs)  # warm-up: first-run allocations and kernel selection
    times = []
    if bs == 1:  # latency: one timed call per text
        for text in texts:
            t = time.perf_counter()
            encode([text], 1)
            times.append(time.perf_counter() - t)
    else:
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            encode(texts, bs)
            times.append(time.perf_counter() - t)
    return {"load_s": load_s, "startup_s": time.perf_counter() - t_import - sum(times), "times": times,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB. Linux: VmHWM, which starts afresh at exec;
    ``ru_maxrss`` is carried over from the parent across fork + exec, so a worker would report the
    runner's peak instead of its own (docs/notes/bench.md)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.stdin.read()))))
