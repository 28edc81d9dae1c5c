"""The quality report as Markdown: one function per section, in :data:`MARKDOWN_SECTIONS` order, each
reading the report dict that :func:`quality.report.build_report` made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .verdicts import MISSED

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



def _units_sentence(miss: dict) -> str | None:
    """'X: 58 of 600 queries changed (30 worse, 28 better); the largest single one moves the score by
    0.11 points' for a miss whose task is scored per unit, else None."""
    u = miss.get("units")
    if not u or "units" not in u:
        return None
    return (f"{miss['task']}: {u['changed']} of {u['units']} {u['unit_name']} changed ({u['worse']} worse, "
            f"{u['better']} better); the largest single one moves the score by {abs(u['largest_unit']):.2f} points "
            f"({'down' if u['largest_unit'] > 0 else 'up'})")



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
            f"Created {report['created']}" + (f" (run started {m['started']})" if m.get("started") else "")
            + f" on {m.get('platform')}, {m.get('cpu', 'CPU not recorded')} "
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
