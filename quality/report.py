"""The comparison report: per task, each variant's score, its drop vs the fp32 baseline and whether
it meets the project's target; fidelity; the sentence-transformers cross-check; Markdown, JSON, PNG.

Targets (DESIGN.md): the drop of each task's main score vs fp32, on the 0-100 scale, must be at most
0.1 points for Q8_0 and 0.5 points for Q4_0 and e4_a8_f4_p4, on every task. Each task is judged at
its own resolution: **met** when the drop is below the line by more than two standard errors (or at
most the line when the task gives no standard error), **missed** when it exceeds the line by more
than two, **not resolved** in between: the task's data cannot tell. A variant that scores higher
than fp32 has a negative drop. The comparison uses the unrounded scores (with a 1e-9-point guard
against float rounding only); nothing is rounded in the variant's favour.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from quant.recipe import held_to
from runtime.cpu import cpu_name
from runtime.outputs import replaced_atomically, write_text_atomic

from .suite import RunResult, fidelity
from .task_types import Task

# w8a8 is held to q8_0's line as its fidelity is to q8_0's (quant.fidelity.TARGETS); w8a8_s4 to the 4-bit one.
TARGETS: dict[str, float] = {"q8_0": 0.1, "q4_0": 0.5, "e4_a8_f4_p4": 0.5, "w8a8": 0.1, "w8a8_s4": 0.5}
# sentence-transformers and the fp32 artifact run the same weights: their scores must agree this well.
ST_AGREEMENT_POINTS = 0.1

# For scale, not a target: the google/embeddinggemma-300m model card's MTEB Mean (Task) at 768 dims,
# full precision vs Google's quantization-aware-trained checkpoints evaluated after quantization
# (MTEB Multilingual v2, English v2, Code v1). These are means over many tasks: per-task drops vary more.
MODEL_CARD_MTEB = {
    "benchmarks": ("Multilingual v2", "English v2", "Code v1"),
    "full precision": (61.15, 69.67, 68.76),
    "q8_0": (60.93, 69.49, 68.70),
    "q4_0": (60.62, 69.31, 67.99),
    "e4_a8_f4_p4": (60.69, 69.32, 68.03),
}


def target_for(label: str, variant: str | None) -> float | None:
    """The allowed drop (points) for a variant, looked up by its manifest variant name, then its label.
    A recipe with per-site overrides (``Q4_0:v8@0-23,...``, as a size budget writes) is held to its
    base format's line: it is built to beat that format."""
    for key in (variant, label):
        target = held_to(TARGETS, key.lower() if key else None)
        if target is not None:
            return target
    return None


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
        "verdicts": {r.label: _verdict([c for c in comparison if c["variant"] == r.label]) for r in others},
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


def _verdict(rows: list[dict]) -> dict:
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


def _units_sentence(miss: dict) -> str | None:
    """'X: 58 of 600 queries changed (30 worse, 28 better); the largest single one moves the score by
    0.11 points' for a miss whose task is scored per unit, else None."""
    u = miss.get("units")
    if not u or "units" not in u:
        return None
    return (f"{miss['task']}: {u['changed']} of {u['units']} {u['unit_name']} changed ({u['worse']} worse, "
            f"{u['better']} better); the largest single one moves the score by {abs(u['largest_unit']):.2f} points "
            f"({'down' if u['largest_unit'] > 0 else 'up'})")


# ---- markdown ------------------------------------------------------------------------------------

def model_card_context() -> str:
    """One sentence: how much Google's own QAT checkpoints lose on MTEB means (model card), per variant."""
    card = MODEL_CARD_MTEB
    full = card["full precision"]
    parts = []
    for v in ("q8_0", "q4_0", "e4_a8_f4_p4"):
        drops = [f - q for f, q in zip(full, card[v])]
        parts.append(f"{v} {min(drops):.2f}-{max(drops):.2f}")
    return ("Google's model card reports that its quantization-aware-trained checkpoints, evaluated after "
            "quantization, lose " + ", ".join(parts) + " points of MTEB Mean (Task) at 768 dims against full "
            "precision (" + " / ".join(card["benchmarks"]) + "; means over many tasks, so single tasks move "
            "more). This suite's variants are post-training quantized from the full-precision weights.")


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:,.0f}"


def _fmt_drop(d: float) -> str:
    change = -d + 0.0  # shown as the change in score (negative = worse); + 0.0 turns -0.0 into 0.0
    return f"{change:+.2f}"


@dataclass(frozen=True)
class _Doc:
    """What every report section reads: the report and the names derived from it once."""

    report: dict
    base: str                   # the baseline's label
    runs: dict[str, dict]       # label -> run summary
    variants: list[str]         # the compared artifact variants (not the baseline, not sentence-transformers)
    ref: dict | None            # the sentence-transformers cross-check, when run
    tasks: list[dict]
    full_dim: int

    @classmethod
    def of(cls, report: dict) -> "_Doc":
        """The section inputs of ``report``."""
        base = report["baseline"]
        runs = {r["label"]: r for r in report["runs"]}
        variants = [r["label"] for r in report["runs"]
                    if r["label"] != base and r.get("kind") != "sentence-transformers"]
        return cls(report, base, runs, variants, report.get("reference"), report["tasks"], runs[base]["dims"][0])


def render_markdown(report: dict) -> str:
    """The report as Markdown (tables + links to the PNG plots): one function per section, in order."""
    doc = _Doc.of(report)
    lines = [line for section in MARKDOWN_SECTIONS for line in section(doc)]
    return "\n".join(lines) + "\n"


def _table_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _header_section(doc: _Doc) -> list[str]:
    """Title, and where, how and against which targets the suite ran."""
    report, m = doc.report, doc.report["meta"]
    return [f"# {report['title']}\n",
            f"Created {report['created']} on {m.get('platform')}, {m.get('cpu', 'CPU not recorded')} "
            f"({m.get('cpu_count')} CPUs), Python {m.get('python')}; "
            f"preset `{m.get('preset')}`, seed {m.get('seed')}, onnxruntime threads {m.get('threads') or 'all'}. "
            f"Main scores are on the 0-100 scale at the full dimension ({doc.full_dim}); the drop is fp32 minus the "
            f"variant (shown as the change, negative = worse). Targets: "
            + ", ".join(f"{k} drop ≤ {v} points" for k, v in report["targets"].items()) + " on every task.\n"]


def _verdict_section(doc: _Doc) -> list[str]:
    """Met / missed / not resolved per variant, the model card's losses for scale, and the torch check."""
    out = ["## Verdict\n"]
    for v in doc.variants:
        out += _variant_verdict(v, doc.report["verdicts"][v])
    out.append("- For scale (not a target): " + model_card_context())
    ref = doc.ref
    if ref:
        if ref["all_agree"]:
            out.append(f"- **sentence-transformers (torch) vs the {doc.base} artifact**: agree within "
                       f"{ref['tolerance']} points on every task (largest difference {ref['max_abs_diff']:.3f}).")
        else:
            bad = [r for r in ref["rows"] if not r["agrees"]]
            out.append(f"- **sentence-transformers (torch) vs the {doc.base} artifact**: DISAGREE on {len(bad)} "
                       f"task(s) (largest difference {ref['max_abs_diff']:.3f} > {ref['tolerance']}): "
                       + ", ".join(r["task"] for r in bad) + ".")
    out.append("")
    return out


def _variant_verdict(v: str, vd: dict) -> list[str]:
    """One variant's verdict bullet: met on every task, missed on some, or not resolved on some."""
    if vd["target"] is None:
        return [f"- **{v}**: no target defined for this variant (worst drop {vd['worst_drop']:.2f} points)."]
    if vd["misses"]:
        out = _miss_lines(v, vd)
    elif vd["not_resolved"]:
        out = [f"- **{v}**: no task missed, {len(vd['not_resolved'])} of {vd['tasks']} not resolved (the drop is "
               f"within two standard errors of the {vd['target']}-point line; the tasks' data cannot tell): "
               f"{', '.join(vd['not_resolved'])}. Worst drop {vd['worst_drop']:.2f}, mean {vd['mean_drop']:.2f}."]
    else:
        return [f"- **{v}**: met on all {vd['tasks']} tasks (drop below {vd['target']} points by more than two "
                f"standard errors; worst drop {vd['worst_drop']:.2f}, mean drop {vd['mean_drop']:.2f})."]
    if vd["misses"] and vd["not_resolved"]:
        out.append(f"  Not resolved (within two standard errors of the line): {', '.join(vd['not_resolved'])}.")
    return out


def _miss_lines(v: str, vd: dict) -> list[str]:
    """The missed bullet of a variant and its notes: misses inside the noise, how they are made up."""
    misses = vd["misses"]
    miss = "; ".join(f"{x['task']} drop {x['drop']:.2f}" + (f" ± {x['drop_se']:.2f}" if x.get("drop_se") else "")
                     + f" > {vd['target']}" for x in misses)
    out = [f"- **{v}**: missed on {len(misses)} of {vd['tasks']} tasks ({miss}, beyond two standard errors). "
           f"The target of ≤ {vd['target']} points is not met."]
    inside = [x["task"] for x in misses if x["beyond_random_error"] is False]
    if inside:
        out.append(f"  Of these, {', '.join(inside)} {'is' if len(inside) == 1 else 'are'} within two standard "
                   "deviations of what random error of the same size does to the score (see the noise check "
                   "below): the direction of the error matters less than its size there.")
    made_up = [t for t in (_units_sentence(x) for x in misses) if t]
    if made_up:
        out.append("  How these drops are made up: " + "; ".join(made_up) + ".")
    return out


def _scores_section(doc: _Doc) -> list[str]:
    """Per task: the baseline's score and each variant's score, change ± SE and status."""
    base, runs, variants, ref = doc.base, doc.runs, doc.variants, doc.ref
    head = ["task", "type", "metric", base] + [f"{v} (change ± SE, status)" for v in variants]
    if ref:
        head.append(f"{ref['label']} (torch)")
    out = [f"## Scores per task ({doc.full_dim} dims)\n", _table_row(head), "|" + "---|" * len(head)]
    comp = {(c["variant"], c["task"]): c for c in doc.report["comparison"]}
    for t in doc.tasks:
        name = t["name"]
        row = [name, t["type"], t["main_score"], f"{runs[base]['scores'][name]:.2f}"]
        for v in variants:
            c = comp[(v, name)]
            status = c["status"] if c["status"] != MISSED else f"**{MISSED}**"
            se = "" if c.get("drop_se") is None else f" ± {c['drop_se']:.2f}"
            row.append(f"{c['score']:.2f} ({_fmt_drop(c['drop'])}{se}, {status})")
        if ref:
            row.append(f"{runs[ref['label']]['scores'][name]:.2f}")
        out.append(_table_row(row))
    mean_row = ["**mean**", "", "", f"{runs[base]['mean_main_score']:.2f}"]
    mean_row += [f"{runs[v]['mean_main_score']:.2f}" for v in variants]
    if ref:
        mean_row.append(f"{runs[ref['label']]['mean_main_score']:.2f}")
    out.append(_table_row(mean_row) + "\n")
    if any(c.get("drop_se") is not None for c in doc.report["comparison"]):
        out.append("± SE is the standard error of the change due to which queries, test texts, word pairs or "
                   "k-means bootstraps the task samples (paired: the same units for both models; per-unit scores "
                   "for retrieval, reranking, classification and clustering, a bootstrap over pairs for STS). A "
                   "task is met or missed only beyond two standard errors of its target line; within them it is "
                   "not resolved: that task's data cannot tell.\n")
    out.append("![scores per task](scores.png)\n")
    return out


def _noise_section(doc: _Doc) -> list[str]:
    """Each variant's drop beside the drops of same-size random error (when the noise check ran)."""
    noisy = [r for r in doc.report["runs"] if r["label"] != doc.base and r.get("random_error")]
    if not noisy:
        return []
    trials = len(next(iter(noisy[0]["random_error"].values()))["drops"])
    head = ["task"] + [f"{r['label']}: drop / random-error drop (mean ± sd)" for r in noisy]
    out = ["## Noise check: drop vs random error of the same size\n",
           "Each text's baseline embedding is turned by the same angle that separates it from the variant's, "
           "towards a random direction, and scored like a variant (trials: "
           f"{trials}). A drop outside mean ± 2 sd of these "
           "random-error drops comes from the direction of the variant's error; inside it, the task's protocol "
           "cannot tell the variant from any equally large error. The verdicts above come from the target and "
           "each task's standard error, not from this check.\n",
           _table_row(head), "|" + "---|" * len(head)]
    for t in doc.tasks:
        cells = [t["name"]]
        for r in noisy:
            n = r["random_error"][t["name"]]
            drop = doc.runs[doc.base]["scores"][t["name"]] - r["scores"][t["name"]]
            flag = "" if abs(drop - n["mean"]) <= 2 * n["std"] else " ◆"
            cells.append(f"{drop:+.2f} / {n['mean']:+.2f} ± {n['std']:.2f}{flag}")
        out.append(_table_row(cells))
    out.append("\n◆ = outside mean ± 2 sd of the random-error drops.\n")
    return out


def _size_speed_section(doc: _Doc) -> list[str]:
    """Size on disk, accuracy level, load time, embedding speed and mean score per run."""
    out = ["## Size and speed\n",
           "| variant | kind | folder MB | graph+weights MB | MatMulNBits accuracy level | load s | embedding s | "
           "tokens | tokens/s | mean score |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc.report["runs"]:
        out.append(f"| {r['label']} | {r.get('kind')} | {_mb(r.get('size_bytes'))} | {_mb(r.get('model_bytes'))} | "
                   f"{r.get('accuracy_level', '–')} | {r.get('load_seconds', 0):.1f} | {r['embed_seconds']:.0f} | "
                   f"{r['tokens']:,} | {r['tokens_per_second'] or 0:.0f} | {r['mean_main_score']:.2f} |")
    out += ["\nSpeed is the whole suite's tokens over the time spent inside `encode` (length-grouped batches of "
            "up to 32 texts), with the thread count above. The accuracy level is baked into a variant by the CPU "
            "that built it (level 4 rounds activations to int8 blocks, which moves its scores).\n",
            "![size vs speed vs score](size_speed_score.png)\n"]
    return out


def _fidelity_section(doc: _Doc) -> list[str]:
    """Cosine to the baseline's embeddings and top-10 neighbour overlap, per variant and dim."""
    fidelity = doc.report["fidelity"]
    if not fidelity:
        return []
    n_texts = next(iter(next(iter(fidelity.values())).values()))["texts"]
    out = [f"## Fidelity vs {doc.base}\n",
           f"Every embedded task text ({n_texts:,} texts, each with its task's prompt): cosine between the variant's "
           "and the baseline's embedding, and the share of each text's 10 nearest neighbours (within its task's "
           "text group) that stay among the 10 nearest.\n",
           "| variant | dim | cos mean | cos min | cos 1st pct | top-10 overlap mean | top-10 overlap min |",
           "|---|---|---|---|---|---|---|"]
    for v, per_dim in fidelity.items():
        for d, f in per_dim.items():
            out.append(f"| {v} | {d} | {f['cos_mean']:.5f} | {f['cos_min']:.5f} | {f['cos_p01']:.5f} | "
                       f"{f['top10_overlap_mean']:.3f} | {f['top10_overlap_min']:.2f} |")
    out.append("")
    return out


def _reference_section(doc: _Doc) -> list[str]:
    """sentence-transformers' score beside the baseline artifact's, per task (when run)."""
    if not doc.ref:
        return []
    out = [f"## sentence-transformers (torch) vs the {doc.base} artifact\n",
           "| task | sentence-transformers | artifact | difference | within 0.1 |",
           "|---|---|---|---|---|"]
    for r in doc.ref["rows"]:
        out.append(f"| {r['task']} | {r['sentence_transformers']:.3f} | {r['artifact']:.3f} | {r['diff']:+.3f} | "
                   f"{'yes' if r['agrees'] else '**NO**'} |")
    out.append("")
    return out


def _matryoshka_section(doc: _Doc) -> list[str]:
    """Main score per task, run and Matryoshka dim (when more than one dim was scored)."""
    dims = doc.runs[doc.base]["dims"]
    if len(dims) <= 1:
        return []
    out = ["## Main score by Matryoshka dimension\n",
           "| task | variant | " + " | ".join(str(d) for d in dims) + " |",
           "|---|---|" + "---|" * len(dims)]
    for t in doc.tasks:
        for r in doc.report["runs"]:
            if not all(str(d) in r["scores_by_dim"] for d in dims):
                continue
            out.append(f"| {t['name']} | {r['label']} | " +
                       " | ".join(f"{r['scores_by_dim'][str(d)][t['name']]:.2f}" for d in dims) + " |")
    out.append("\nThe targets apply to the full dimension; smaller dims are shown for information.\n")
    return out


def _run_time_section(doc: _Doc) -> list[str]:
    """Wall and embedding time per run, and the whole command's."""
    out = ["## Run time\n",
           "| run | wall s (embedding + scoring) | of which embedding s | tokens | tokens/s |",
           "|---|---|---|---|---|"]
    for r in doc.report["runs"]:
        out.append(f"| {r['label']} | {r['wall_seconds']:.0f} | {r['embed_seconds']:.0f} | {r['tokens']:,} | "
                   f"{r['tokens_per_second'] or 0:.0f} |")
    total = doc.report["meta"].get("suite_wall_seconds")
    if total is not None:
        out.append(f"\nWhole command: {total:.0f} s ({total / 60:.1f} min) including task building, model loading "
                   "and the report.\n")
    return out


def _tasks_section(doc: _Doc) -> list[str]:
    """What each task is: data, sizes, tokens, prompts, source and licences."""
    out = ["## Tasks\n",
           "| task | type | language | data | tokens / variant | prompt(s) | source (package file) | licence |",
           "|---|---|---|---|---|---|---|---|"]
    for t in doc.tasks:
        sizes = ", ".join(f"{k} {v}" for k, v in t["sizes"].items())
        prompts = ", ".join(f"{k}: `{v}`" for k, v in (t["prompts_used"] or {}).items())
        src = t["source"]
        out.append(f"| {t['name']} | {t['type']} | {', '.join(t['languages'])} | {t['description']}; {sizes} | "
                   f"{t['tokens'] or 0:,} | {prompts} | {src['description']} (`{src['file']}`) | "
                   f"package: {src['package_licence']}; data: {src['data_licence']} |")
    total_tokens = sum(t["tokens"] or 0 for t in doc.tasks)
    out.append(f"\nTotal per variant: {total_tokens:,} tokens. The data are read from the installed packages at run "
               "time (nothing is copied into the repository); every subsample is drawn with a fixed seed.\n")
    return out


def _protocol_section(doc: _Doc) -> list[str]:
    """How prompts are chosen and each task type is scored, with the sizes this run used."""
    out = ["## Protocol\n",
           "- Prompts are resolved as mteb does (task name + prompt type, task name, task type + prompt type, task "
           "type, prompt type): retrieval queries `Retrieval-query`, retrieval documents `Retrieval-document`, STS "
           "`STS`, classification `Classification`, clustering `Clustering`, reranking queries *and* candidates "
           "`Reranking` (mteb's task-type key outranks the `document` prompt type).",
           "- STS: Spearman correlation of cosine similarity with the human scores (`cosine_spearman`).",
           "- Retrieval: nDCG@10 with linear gains over the whole corpus (trec_eval's definition). Reranking: mean "
           "average precision over each query's candidate list (`map_at_1000`)."]
    cls = next((t["sizes"] for t in doc.tasks if t["type"] == "Classification"), None)
    clu = next((t["sizes"] for t in doc.tasks if t["type"] == "Clustering"), None)
    if cls:
        out.append(f"- Classification: mteb's protocol: {cls['n_experiments']} experiments (mteb's default is 10; "
                   "more average out the few-shot classifiers' own variance), each trains "
                   f"`LogisticRegression(max_iter=100, random_state=42)` on the first {cls['samples_per_label']} "
                   "examples per label of the training pool after mteb's cumulative `RandomState(42)` shuffle, and "
                   "scores accuracy on the whole test set; the mean is reported.")
    if clu:
        out.append(f"- Clustering: mteb's bootstrap protocol: {clu['bootstraps']} samples of "
                   f"{clu['bootstrap_size']:,} texts drawn with replacement (`random.Random(42)`; mteb's "
                   "`max_documents_per_cluster`), `MiniBatchKMeans(k = labels, batch_size=512, n_init=1, "
                   "random_state=42)`, V-measure, mean.")
    out.append("- Precision: one test text of 400 is 0.25 points of accuracy, and mteb's 10 k-means bootstraps of a "
               "two-cluster corpus vary by 7-10 points each; the ± SE beside each change measures this per task. "
               "The targets are applied as written anyway.")
    return out


#: The report's sections in order; each takes the :class:`_Doc` and returns its lines (none to skip).
MARKDOWN_SECTIONS: tuple[Callable[[_Doc], list[str]], ...] = (
    _header_section, _verdict_section, _scores_section, _noise_section, _size_speed_section, _fidelity_section,
    _reference_section, _matryoshka_section, _run_time_section, _tasks_section, _protocol_section,
)


# ---- plots ---------------------------------------------------------------------------------------

def plot_scores(report: dict, path: Path) -> None:
    """Grouped bars of the main score per task per run, and the drop vs baseline with the targets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = report["baseline"]
    runs = report["runs"]
    tasks = [t["name"] for t in report["tasks"]]
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(runs))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(tasks) + 3), 9), sharex=True)
    colour = {r["label"]: f"C{i}" for i, r in enumerate(runs)}  # one colour per run in both panels
    for i, r in enumerate(runs):
        ax1.bar(x + (i - (len(runs) - 1) / 2) * width, [r["scores"][t] for t in tasks], width, label=r["label"],
                color=colour[r["label"]])
    ax1.set_ylabel("main score (0-100)")
    ax1.set_title(f"Main score per task ({runs[0]['dims'][0]} dims)")
    ax1.legend(fontsize=8, ncol=max(1, min(5, len(runs))))
    ax1.grid(axis="y", alpha=0.3)
    others = [c for c in report["comparison"]]
    labels = list(dict.fromkeys(c["variant"] for c in others))
    if report.get("reference"):
        labels.append(report["reference"]["label"])
    width2 = 0.8 / max(1, len(labels))
    shown: list[float] = []
    for i, lab in enumerate(labels):
        if report.get("reference") and lab == report["reference"]["label"]:
            # the baseline artifact minus sentence-transformers: the same sign convention as a drop
            drops = {r["task"]: r["diff"] for r in report["reference"]["rows"]}
        else:
            drops = {c["task"]: c["drop"] for c in others if c["variant"] == lab}
        missed = {c["task"] for c in others if c["variant"] == lab and c["status"] == MISSED}
        se = {c["task"]: c.get("drop_se") for c in others if c["variant"] == lab}
        yerr = [2 * (se.get(t) or 0.0) for t in tasks] if any(se.values()) else None
        ax2.bar(x + (i - (len(labels) - 1) / 2) * width2, [drops[t] for t in tasks], width2, label=lab,
                color=colour.get(lab), edgecolor=["red" if t in missed else "none" for t in tasks], linewidth=1.5,
                yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "dimgray"})
        shown.extend(drops[t] for t in tasks)
    # Scale to the drops and targets, not the whiskers: the clustering tasks' ± 2 SE spans several
    # points and would flatten every other bar (whiskers beyond the frame are cut).
    lim = [min(shown + [0.0]) - 0.5, max(shown + list(report["targets"].values())) + 0.5]
    ax2.set_ylim(*lim)
    for tgt in sorted(set(report["targets"].values())):
        ax2.axhline(tgt, linestyle="--", linewidth=1, color="gray")
        ax2.text(len(tasks) - 0.5, tgt, f" target {tgt}", va="bottom", ha="right", fontsize=8, color="gray")
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_ylabel(f"drop vs {base} (points, higher = worse;\nred edge = missed; whiskers ± 2 SE)")
    if labels:
        ax2.legend(fontsize=8, ncol=min(5, len(labels)))
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_xticks(x)
    ax2.set_xticklabels(tasks, rotation=35, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_size_speed_score(report: dict, path: Path) -> None:
    """Size on disk vs embedding speed, each point labelled with its mean main score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    sizes = [r.get("model_bytes") or 0 for r in runs]
    speeds = [r["tokens_per_second"] or 0 for r in runs]
    scores = [r["mean_main_score"] for r in runs]
    sc = ax.scatter([s / 1e6 for s in sizes], speeds, c=scores, cmap="viridis", s=120, edgecolors="black")
    for r, s, v, q in zip(runs, sizes, speeds, scores):
        ax.annotate(f"{r['label']}\nmean {q:.2f}", (s / 1e6, v), textcoords="offset points", xytext=(8, 4), fontsize=8)
    fig.colorbar(sc, ax=ax, label="mean main score")
    ax.margins(x=0.25, y=0.2)  # room for the point labels
    ax.set_xlabel("graph + weights on disk (MB)")
    ax.set_ylabel("tokens / second over the suite")
    ax.set_title("Size vs speed vs score")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
