"""The comparison report: per task, each variant's score, its drop vs the fp32 baseline and its
outcome against the target (:mod:`quality.verdicts`); fidelity; the sentence-transformers cross-check.
Written as JSON, Markdown (:mod:`quality.report_markdown`) and PNG plots (:mod:`quality.report_plots`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.cpu import cpu_name
from runtime.outputs import replaced_atomically, write_text_atomic

from .report_markdown import render_markdown
from .report_plots import plot_scores, plot_size_speed_score
from .suite import RunResult, fidelity
from .task_types import Task
from .verdicts import ST_AGREEMENT_POINTS, TARGETS, target_for, task_status, variant_verdict

def build_report(tasks: Sequence[Task], results: Sequence[RunResult], *, baseline: str,
                 reference: RunResult | None = None, meta: dict | None = None,
                 details: dict | None = None) -> dict:
    """Everything the report shows, as one JSON-friendly dict. ``details``: a dict the caller keeps
    across rewrites of one run's report, so each variant's drop details are computed once (they
    rerun the classification and clustering protocols: minutes per variant on the precise preset)."""
    by_label = {r.label: r for r in results}
    if baseline not in by_label:
        raise ValueError(f"baseline {baseline!r} is not among the results ({', '.join(by_label)})")
    base = by_label[baseline]
    others = [r for r in results if r.label != baseline]
    details = {} if details is None else details
    comparison = [row for r in others for row in _comparison_rows(tasks, base, r, details)]
    fid = {r.label: fidelity(base, r) for r in others}
    if reference is not None:
        fid[reference.label] = fidelity(base, reference)
    runs = [r.summary() for r in results] + ([reference.summary()] if reference is not None else [])
    return {
        "title": "EmbeddingGemma-300m quality report",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "meta": {"platform": platform.platform(), "cpu": cpu_name(), "python": platform.python_version(),
                 "cpu_count": os.cpu_count(), **(meta or {})},
        "targets": TARGETS, "st_agreement_points": ST_AGREEMENT_POINTS,
        "baseline": baseline, "tasks": _task_info(tasks, base), "runs": runs, "comparison": comparison,
        "verdicts": {r.label: variant_verdict([c for c in comparison if c["variant"] == r.label]) for r in others},
        "fidelity": fid,
        "reference": None if reference is None else _reference_block([t.name for t in tasks], base, reference),
    }


def _comparison_rows(tasks: Sequence[Task], base: RunResult, other: RunResult, details: dict) -> list[dict]:
    """Per task: ``other``'s score, its drop vs ``base``, its status, the drop's standard error and units,
    and where the drop lies against same-size random error."""
    tgt = target_for(other.label, other.info.get("variant"))
    rows = []
    for task in tasks:
        name = task.name
        score, ref = other.main_score(name), base.main_score(name)
        drop = ref - score
        noise = (other.random_error or {}).get(name)
        key = (name, base.label, other.label)
        if key not in details:
            details[key] = _drop_detail(task, base, other)
        detail = details[key]
        se = None if detail is None else detail["se"]
        status = task_status(drop, tgt, se)
        units = {k: v for k, v in (detail or {}).items() if k != "se"} or None
        rows.append({"variant": other.label, "task": name, "score": score, "baseline": ref,
                     "drop": drop, "target": tgt, "status": status, "drop_se": se,
                     # how the drop is made up: units changed, the largest single unit's share
                     "units": units,
                     # does the task's data settle the verdict? the target lies outside drop +- 2 SE
                     "resolved": None if se is None or tgt is None else abs(drop - tgt) > 2 * se,
                     "random_error_mean": noise["mean"] if noise else None,
                     "random_error_std": noise["std"] if noise else None,
                     # outside mean +- 2 sd of same-size random error: the error's direction matters
                     "beyond_random_error": (abs(drop - noise["mean"]) > 2 * noise["std"]) if noise else None})
    return rows


def _reference_block(task_names: list[str], base: RunResult, reference: RunResult) -> dict:
    """sentence-transformers vs the baseline artifact per task, and whether they agree to the tolerance."""
    rows = []
    for name in task_names:
        st, art = reference.main_score(name), base.main_score(name)
        rows.append({"task": name, "sentence_transformers": st, "artifact": art, "diff": art - st,
                     "agrees": abs(art - st) <= ST_AGREEMENT_POINTS + 1e-9})
    return {"label": reference.label, "tolerance": ST_AGREEMENT_POINTS, "rows": rows,
            "all_agree": all(r["agrees"] for r in rows), "max_abs_diff": max(abs(r["diff"]) for r in rows)}


def _task_info(tasks: Sequence[Task], base: RunResult) -> list[dict]:
    """Each task's description, with the tokens and prompts of the baseline's run."""
    out = []
    for t in tasks:
        info = t.info()
        info["tokens"] = base.tokens.get(t.name)
        info["prompts_used"] = base.prompts_used.get(t.name)
        out.append(info)
    return out


def _drop_detail(task: Task, base: RunResult, other: RunResult) -> dict | None:
    """``Task.drop_detail`` of ``other`` vs ``base`` at the full dim (standard error in points, and for
    tasks scored per unit how the drop is made up): from the per-unit scores both runs kept, else from
    their embeddings; None when either run kept neither."""
    if task.name in base.unit_scores and task.name in other.unit_scores:
        return task.units_drop_detail(base.unit_scores[task.name], other.unit_scores[task.name])
    keys = [g.key for g in task.groups()]
    if not all((task.name, k) in base.embeddings and (task.name, k) in other.embeddings for k in keys):
        return None
    emb = [{k: r.embeddings[(task.name, k)] for k in keys} for r in (base, other)]
    return task.drop_detail(*emb)



def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, scores.png and size_speed_score.png into ``out_dir``, each file
    replaced in one step (the CLI rewrites them after every variant)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "scores_png": out / "scores.png",
             "size_speed_png": out / "size_speed_score.png"}
    write_text_atomic(paths["json"], json.dumps(report, indent=2, default=_json_default) + "\n")
    write_text_atomic(paths["markdown"], render_markdown(report))
    for plot, key in ((plot_scores, "scores_png"), (plot_size_speed_score, "size_speed_png")):
        with replaced_atomically(paths[key]) as tmp:
            plot(report, tmp)
    return paths


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
