"""Which drop a variant may show on a task and how a drop is judged: the targets, and each task
met, missed or not resolved at its own resolution.

Targets (DESIGN.md): the drop of each task's main score vs fp32, on the 0-100 scale, must be at most
0.1 points for Q8_0 and 0.5 points for Q4_0 and e4_a8_f4_p4, on every task. Each task is judged at
its own resolution: **met** when the drop is below the line by more than two standard errors (or at
most the line when the task gives no standard error), **missed** when it exceeds the line by more
than two, **not resolved** in between: the task's data cannot tell. A variant that scores higher
than fp32 has a negative drop. The comparison uses the unrounded scores (with a 1e-9-point guard
against float rounding only); nothing is rounded in the variant's favour.
"""
from __future__ import annotations

import numpy as np

from quant.recipe import held_to

# w8a8 is held to q8_0's line as its fidelity is to q8_0's (quant.fidelity.TARGETS); w8a8_s4 to the 4-bit one,
# w8a8_fast (fidelity below the 8-bit target) too.
TARGETS: dict[str, float] = {"q8_0": 0.1, "q4_0": 0.5, "e4_a8_f4_p4": 0.5, "w8a8": 0.1, "w8a8_s4": 0.5,
                             "w8a8_fast": 0.5}
# sentence-transformers and the fp32 artifact run the same weights: their scores must agree this well.
ST_AGREEMENT_POINTS = 0.1


def target_for(label: str, variant: str | None) -> float | None:
    """The allowed drop (points) for a variant, looked up by its manifest variant name, then its label.
    A recipe with per-site overrides (``Q4_0:v8@0-23,...``, as a size budget writes) is held to its
    base format's line: it is built to beat that format."""
    for key in (variant, label):
        target = held_to(TARGETS, key.lower() if key else None)
        if target is not None:
            return target
    return None


MET, MISSED, NOT_RESOLVED, NO_TARGET = "met", "missed", "not resolved", "no target"


def task_status(drop: float, target: float | None, se: float | None) -> str:
    """One task's outcome against its target at the task's resolution (module docstring): met,
    missed, not resolved (within two standard errors of the line) or no target."""
    if target is None:
        return NO_TARGET
    margin = 2 * (se or 0.0)
    # 1e-9 points only absorbs float rounding in the subtraction (0.1 is not exact in binary);
    # it is six orders of magnitude below the smallest score change the tasks can show.
    if drop > target + margin + 1e-9:
        return MISSED
    return MET if drop <= target - margin + 1e-9 else NOT_RESOLVED


def variant_verdict(rows: list[dict]) -> dict:
    """One variant's verdict from its comparison rows: target, misses, unresolved tasks, worst and mean
    drop; ``meets_target`` is True when every task is met, False when one is missed, else None."""
    misses = [c for c in rows if c["status"] == MISSED]
    unresolved = [c["task"] for c in rows if c["status"] == NOT_RESOLVED]
    has_target = bool(rows) and rows[0]["target"] is not None
    return {"target": rows[0]["target"] if rows else None, "tasks": len(rows),
            "misses": [{"task": c["task"], "drop": c["drop"], "drop_se": c["drop_se"], "units": c["units"],
                        "beyond_random_error": c["beyond_random_error"]} for c in misses],
            "not_resolved": unresolved,
            "worst_drop": max(c["drop"] for c in rows) if rows else None,
            "mean_drop": float(np.mean([c["drop"] for c in rows])) if rows else None,
            "meets_target": (False if misses else None if unresolved else True) if has_target else None}
