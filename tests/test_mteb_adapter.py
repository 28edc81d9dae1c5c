"""The mteb adapter on local custom tasks (no network), and the suite's protocols checked against mteb's
own code: the same data through ``mteb.evaluate`` and through the suite must give the same scores."""
from __future__ import annotations

import types

import numpy as np
import pytest

mteb = pytest.importorskip("mteb", reason="mteb is not installed (pip install -e '.[mteb]'); the adapter tests need it")
pytest.importorskip("sklearn", reason="the quality extra is not installed")

from datasets import Dataset, DatasetDict  # noqa: E402  (installed with mteb)
from mteb.abstasks import AbsTaskClassification, AbsTaskClustering, AbsTaskRetrieval, AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models.abs_encoder import get_prompt_name as mteb_get_prompt_name  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from quality import metrics  # noqa: E402
from quality.mteb_adapter import EmbedderEncoder  # noqa: E402
from quality.prompts import resolve_prompt_name  # noqa: E402
from quality.suite import ArtifactEncoder, run_suite  # noqa: E402
from quality.tasks import build_tasks  # noqa: E402

# The tiny model reads at most 64 tokens: most smoke texts are cut, as mteb would cut them too.
pytestmark = pytest.mark.filterwarnings("ignore::runtime.embedder.TruncationWarning")


def _metadata(name: str, task_type: str, main_score: str) -> TaskMetadata:
    return TaskMetadata(
        name=name, description="local test task built in memory", dataset={"path": "local/none", "revision": "0"},
        type=task_type, category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], main_score=main_score,
        reference=None, date=None, domains=None, task_subtypes=None, license="not specified",
        annotations_creators=None, dialect=[], sample_creation="found", bibtex_citation="", modalities=["text"])


def _mteb_tasks(ours):
    """mteb task objects holding exactly the data of the suite's smoke tasks."""
    by_name = {t.name: t for t in ours}
    sts, ret, rr = by_name["SimLex999"], by_name["RTReviewPlotRetrieval"], by_name["RTReviewPlotReranking"]
    cls, clu = by_name["RTSentimentClassification"], by_name["ChineseNovelClustering"]

    class LocalSTS(AbsTaskSTS):
        metadata = _metadata("LocalSimLex", "STS", "cosine_spearman")
        min_score, max_score = 0, 10

        def load_data(self, **kwargs):
            self.dataset = DatasetDict({"test": Dataset.from_dict({
                "sentence1": [sts.texts[i] for i, _, _ in sts.pairs],
                "sentence2": [sts.texts[j] for _, j, _ in sts.pairs],
                "score": [s for _, _, s in sts.pairs]})})
            self.data_loaded = True

    def retrieval_split(task, top_ranked):
        corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(len(task.corpus))],
                                    "title": [""] * len(task.corpus), "text": task.corpus})
        queries = Dataset.from_dict({"id": [f"q{i}" for i in range(len(task.queries))], "text": task.queries})
        rel = task.relevant
        qrels = {f"q{q}": {f"d{d}": int(g) for d, g in (r.items() if isinstance(r, dict) else ((d, 1) for d in r))}
                 for q, r in enumerate(rel)}
        return {"corpus": corpus, "queries": queries, "relevant_docs": qrels, "top_ranked": top_ranked}

    def _splits(task):
        # mteb <= 2.12 pre-builds dataset["default"]; later 2.x leave it None until loaded
        if task.dataset is None:
            task.dataset = {}
        return task.dataset.setdefault("default", {})

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = _metadata("LocalRTRetrieval", "Retrieval", "ndcg_at_10")

        def load_data(self, **kwargs):
            _splits(self)["test"] = retrieval_split(ret, None)
            self.data_loaded = True

    class LocalReranking(AbsTaskRetrieval):
        metadata = _metadata("LocalRTReranking", "Reranking", "map_at_1000")

        def load_data(self, **kwargs):
            top = {f"q{q}": [f"d{c}" for c in cands] for q, cands in enumerate(rr.candidates)}
            _splits(self)["test"] = retrieval_split(rr, top)
            self.data_loaded = True

    class LocalClassification(AbsTaskClassification):
        metadata = _metadata("LocalRTSentiment", "Classification", "accuracy")
        samples_per_label = cls.samples_per_label
        n_experiments = cls.n_experiments

        def load_data(self, **kwargs):
            # mteb's binary metrics need integer labels; sorted ids keep the suite's class order
            ids = {lab: i for i, lab in enumerate(sorted(set(cls.train_labels)))}
            self.dataset = DatasetDict({
                "train": Dataset.from_dict({"text": cls.train_texts, "label": [ids[x] for x in cls.train_labels]}),
                "test": Dataset.from_dict({"text": cls.test_texts, "label": [ids[x] for x in cls.test_labels]})})
            self.data_loaded = True

    class LocalClustering(AbsTaskClustering):
        metadata = _metadata("LocalNovels", "Clustering", "v_measure")
        max_fraction_of_documents_to_embed = None   # embed all, as the suite does
        max_documents_per_cluster = clu.cluster_size  # mteb's default 16,384 in the suite; smaller in smoke
        n_clusters = clu.n_bootstrap

        def load_data(self, **kwargs):
            self.dataset = DatasetDict({"test": Dataset.from_dict({"sentences": clu.texts, "labels": clu.labels})})
            self.data_loaded = True

    return {"SimLex999": LocalSTS(), "RTReviewPlotRetrieval": LocalRetrieval(), "RTReviewPlotReranking": LocalReranking(),
            "RTSentimentClassification": LocalClassification(), "ChineseNovelClustering": LocalClustering()}


def test_prompt_resolution_is_mteb_s(tiny_artifact):
    real = {"query": "q", "document": "d", "Retrieval": "q", "Retrieval-query": "q", "Retrieval-document": "d",
            "Reranking": "q", "STS": "s", "Classification": "c", "Clustering": "k", "BitextMining": "q",
            "PairClassification": "s", "Summarization": "m", "SciFact-query": "x", "SciFact": "y"}
    tiny = dict(EmbedderEncoder(tiny_artifact, threads=1, verify=False).model_prompts)
    for prompts in (real, tiny):
        for task_name in ("SciFact", "LocalTask"):
            for task_type in ("Retrieval", "Reranking", "STS", "Classification", "Clustering", "PairClassification",
                              "BitextMining", "Summarization", "InstructionRetrieval"):
                for pt in (None, PromptType.query, PromptType.document):
                    meta = types.SimpleNamespace(name=task_name, type=task_type)
                    assert resolve_prompt_name(prompts, task_name, task_type, pt.value if pt else None) == \
                        mteb_get_prompt_name(prompts, meta, pt), (task_name, task_type, pt)


def test_undersampling_is_mteb_s():
    labels = [i % 3 for i in range(40)]
    task = _mteb_tasks(build_tasks("smoke"))["RTSentimentClassification"]
    ds = Dataset.from_dict({"text": [str(i) for i in range(40)], "label": labels})
    idxs, theirs = None, []
    for i in range(5):
        _, idxs, chosen = task._undersample_data(ds, i, idxs)
        theirs.append(list(chosen))
    assert metrics.undersample_experiments(labels, task.samples_per_label, 5, seed=task.seed) == theirs


def test_adapter_runs_local_tasks_and_matches_the_suite(tiny_artifact):
    ours = build_tasks("smoke", names=["SimLex999", "RTReviewPlotRetrieval", "RTReviewPlotReranking",
                                        "RTSentimentClassification", "ChineseNovelClustering"])
    suite = run_suite(ArtifactEncoder(tiny_artifact, threads=1, verify=False), ours, label="fp32", log=None)
    local = _mteb_tasks(ours)
    model = EmbedderEncoder(tiny_artifact, threads=1, verify=False)
    result = mteb.evaluate(model, list(local.values()), cache=None, show_progress_bar=False,
                           encode_kwargs={"batch_size": 8})
    assert not result.exceptions, result.exceptions
    theirs = {tr.task_name: tr.scores["test"][0]["main_score"] for tr in result.task_results}
    for name, task in local.items():
        ours_score = suite.main_score(name) / 100
        # mteb stores scores rounded to 5 decimals
        assert theirs[task.metadata.name] == pytest.approx(ours_score, abs=1e-5), name
    # mteb asked for the prompt types; the adapter resolved them as the suite did
    seen = {(t, pt): p for t, pt, p, _ in model.calls}
    assert seen[("LocalRTRetrieval", "query")] == "Retrieval-query"
    assert seen[("LocalRTRetrieval", "document")] == "Retrieval-document"
    assert seen[("LocalRTReranking", "query")] == "query" and seen[("LocalRTReranking", "document")] == "document"
    assert seen[("LocalSimLex", None)] == "STS" and seen[("LocalNovels", None)] == "Clustering"


def test_adapter_truncated_dim_and_metadata(tiny_artifact):
    model = EmbedderEncoder(tiny_artifact, threads=1, verify=False, dim=32)
    assert model.mteb_model_meta.name.endswith("-32d") and model.mteb_model_meta.embed_dim == 32
    loader = [{"text": ["a cat", "a dog"]}, {"text": ["the sun"]}]
    meta = types.SimpleNamespace(name="LocalTask", type="STS")
    emb = model.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="dim"):
        EmbedderEncoder(tiny_artifact, threads=1, verify=False, dim=7)
