"""After each variant is written: embed a few texts with it and with fp32, and refuse a broken graph."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runtime.artifact import update_manifest
from runtime.compare import cosines_to, embed_texts

log = logging.getLogger("quant")

#: Texts embedded by the check (short, a sentence, code, French).
CHECK_TEXTS = (
    "Which planet is known as the Red Planet?",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "def mean(xs): return sum(xs) / len(xs)",
    "La tour Eiffel a été construite pour l'Exposition universelle de 1889 à Paris.",
)
#: Below this cosine to fp32 the written graph is broken (a layout bug, not quantization noise).
MIN_COSINE = 0.9


class SelfCheck:
    """fp32 vectors of ``CHECK_TEXTS``, computed once and compared with each staged variant."""

    def __init__(self, fp32_dir: Path, threads: int | None):
        self.threads = threads
        self.reference = embed_texts(fp32_dir, CHECK_TEXTS, threads=threads)

    def run(self, folder: Path) -> list[float]:
        """Cosines of ``folder``'s vectors to fp32; recorded in its manifest, or RuntimeError when the
        graph is broken."""
        cosines = [float(c) for c in cosines_to(self.reference, folder, CHECK_TEXTS, threads=self.threads)[None]]
        if not np.all(np.isfinite(cosines)) or min(cosines) < MIN_COSINE:
            raise RuntimeError(f"the quantized graph disagrees with fp32 far beyond quantization noise "
                               f"(cosines {cosines}); this is a bug in the quant stage, please report it")
        update_manifest(folder, quant_check={"texts": len(cosines), "min_cosine_vs_fp32": min(cosines)})
        log.info("self-check: cosine to fp32 on %d texts, min %.4f (a smoke test of the graph; fidelity is "
                 "python -m quant.fidelity)", len(cosines), min(cosines))
        return cosines
