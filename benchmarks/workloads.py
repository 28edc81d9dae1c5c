"""Fixed benchmark workloads cut from the repository's varied text corpus.

Texts are whole sentences (never token windows that start mid-word), grouped to the target token
lengths with the artifact's own tokenizer, and picked with a fixed seed so every run and every
system sees the same inputs.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from quant.fidelity import DEFAULT_TEXTS

CORPUS = DEFAULT_TEXTS
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass(frozen=True)
class Workload:
    """One fixed set of texts and the batch size they are embedded with."""

    name: str
    texts: tuple[str, ...]
    batch_size: int
    description: str
    #: tokens per text as the model reads them (BOS/EOS included), counted with the tokenizer that cut it
    token_counts: tuple[int, ...] = ()


def _sentences(corpus: list[dict]) -> list[str]:
    out = []
    for item in corpus:
        if item["lang"] in ("code", "emoji") or item["kind"] in ("short",):
            continue
        out.extend(s.strip() for s in _SENTENCE_END.split(item["text"]) if len(s.strip()) > 20)
    return out


def _group(sentences: list[str], count, target: int, lo: int, hi: int, rng: random.Random) -> list[str]:
    """Greedily join shuffled sentences until each text lands in [lo, hi] tokens."""
    texts, current, pool = [], "", sentences[:]
    rng.shuffle(pool)
    for s in pool * 4:
        candidate = f"{current} {s}".strip()
        n = count(candidate)
        if n > hi:
            current = s if count(s) <= hi else ""
            continue
        current = candidate
        if n >= lo:
            texts.append(current)
            current = ""
            if len(texts) == target:
                return texts
    raise RuntimeError(f"could not build {target} texts of {lo}-{hi} tokens from the corpus")


_SPECS = {  # name: ((count, lo, hi) groups, batch size, description)
    "short": (((64, 26, 34),), 64, "one batch of 64 texts of ~30 tokens"),
    "medium": (((32, 118, 138),), 32, "one batch of 32 texts of ~128 tokens"),
    "long": (((8, 470, 530), (2, 1900, 2040)), 8, "8 texts of ~500 tokens and 2 of ~2,000"),
    "latency": (((32, 8, 20),), 1, "32 single search-box queries of 8-20 tokens, batch 1"),
}
NAMES = tuple(_SPECS)


def tokenizer_json_of(folders) -> Path:
    """tokenizer.json of the first folder that ships one: the workloads are cut with it (an artifact
    built with ``--tokenizer sentencepiece`` has none)."""
    for folder in folders:
        if (Path(folder) / "tokenizer.json").is_file():
            return Path(folder) / "tokenizer.json"
    raise FileNotFoundError("none of the benchmarked folders ships tokenizer.json, which cuts the workloads; "
                            "add the fp32 artifact (or any folder built with --tokenizer all) to the run")


def build_workloads(tokenizer_json: str | Path, names=NAMES, seed: int = 0) -> dict[str, Workload]:
    """short (64 x ~30 tokens), medium (32 x ~128), long (8 x ~500 + 2 x ~2,000), latency (32 single queries)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    count = lambda text: len(tok.encode(text).ids)  # noqa: E731 - includes BOS/EOS like the model input
    sentences = _sentences(json.loads(CORPUS.read_text(encoding="utf-8")))
    out = {}
    for name in names:
        groups, batch_size, description = _SPECS[name]
        rng = random.Random(f"{seed}-{name}")  # per-workload seed: the same texts whichever subset is built
        texts = [t for n, lo, hi in groups for t in _group(sentences, count, n, lo, hi, rng)]
        out[name] = Workload(name, tuple(texts), batch_size, description, tuple(count(t) for t in texts))
    return out
