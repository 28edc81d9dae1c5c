"""Seeded subsampling and text cutting shared by the task builders in :mod:`quality.tasks`.

Every draw takes an explicit ``random.Random`` seeded by :func:`task_seed`, so a task's data depend on
the suite seed and the task's name only, never on which other tasks are built.
"""
from __future__ import annotations

import random
import re
import zlib
from typing import Sequence


def task_seed(seed: int, name: str) -> int:
    """A per-task seed: stable across runs and Python versions (crc32, not ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def balanced_sample(items: Sequence, labels: Sequence, per_label: int, rng: random.Random,
                    exclude: set | None = None) -> list[int]:
    """Indices of up to ``per_label`` items of each label, in a seeded random order."""
    by_label: dict = {}
    for i, lab in enumerate(labels):
        if exclude is None or i not in exclude:
            by_label.setdefault(lab, []).append(i)
    chosen = []
    for lab in sorted(by_label):
        idx = by_label[lab]
        chosen.extend(rng.sample(idx, min(per_label, len(idx))))
    rng.shuffle(chosen)
    return chosen


def round_robin(groups: dict, n: int, rng: random.Random) -> list:
    """Up to n items taken one per group in turn (groups in seeded order), so no group dominates."""
    pools = {k: rng.sample(v, len(v)) for k, v in groups.items()}
    keys = sorted(pools)
    rng.shuffle(keys)
    out = []
    while len(out) < n and any(pools.values()):
        for k in keys:
            if pools[k] and len(out) < n:
                out.append(pools[k].pop())
    return out


def text_chunks(text: str, min_chars: int, max_chars: int, sentence_end: str) -> list[str]:
    """Paragraphs merged until at least ``min_chars`` long; long ones split at sentence ends."""
    pieces: list[str] = []
    for para in (p.strip() for p in text.splitlines()):
        if not para:
            continue
        while len(para) > max_chars:
            cut = max(para.rfind(ch, 0, max_chars) for ch in sentence_end)
            cut = cut + 1 if cut >= min_chars // 2 else max_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    out, cur = [], ""
    for p in pieces:
        cur = f"{cur} {p}".strip() if cur and not re.match(r"[\u3000-\u9fff]", p) else cur + p
        if len(cur) >= min_chars:
            out.append(cur[:max_chars])
            cur = ""
    return out


def truncate_words(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, at the last space when one is past the middle."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]
