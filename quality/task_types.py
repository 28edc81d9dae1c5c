"""The five MTEB task types the suite scores: STS, retrieval, reranking, classification, clustering.

A task says which texts it needs embedded (in :class:`TextGroup` s, each with the mteb prompt type of
its side) and turns those embeddings into MTEB's main score for its type, in points (0-100). The
suite's concrete tasks, built from packaged data, are registered in :mod:`quality.tasks`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from runtime.vectors import cosine_matrix, row_cosines

from . import datasets as ds
from . import metrics


@dataclass
class TextGroup:
    """Texts embedded with one prompt: ``prompt_type`` is mteb's ``query`` / ``document`` / None."""

    key: str
    texts: list[str]
    prompt_type: str | None = None


@dataclass
class Task(ABC):
    """One evaluation task (name, mteb task type, languages, provenance)."""

    name: str
    type: str
    languages: list[str]
    description: str
    source: ds.Source
    main_score_name: str = field(init=False, default="")
    seed: int = 42

    @abstractmethod
    def groups(self) -> list[TextGroup]:
        """The texts to embed, by group."""

    @abstractmethod
    def evaluate(self, emb: dict[str, np.ndarray]) -> dict:
        """Scores from {group key: [n, dim] embeddings}; ``main_score`` is in points (0-100)."""

    @abstractmethod
    def sizes(self) -> dict:
        """Sizes of the evaluated data (for the report)."""

    def evaluate_units(self, emb: dict[str, np.ndarray]) -> tuple[dict, np.ndarray | None]:
        """``evaluate``'s scores and the per-unit values behind the main score (see ``unit_scores``)
        from one scoring, so a suite run keeps both without rerunning a task's protocol; None for
        task types without per-unit scores."""
        return self.evaluate(emb), None

    def unit_scores(self, emb: dict[str, np.ndarray]) -> np.ndarray:
        """Per-unit values (points) whose mean is the main score: per query, per test text or per
        bootstrap, depending on the task type."""
        units = self.evaluate_units(emb)[1]
        if units is None:
            raise NotImplementedError(f"{type(self).__name__} has no per-unit scores")
        return units

    #: What one unit of ``unit_scores`` is, for the report ("queries", "test texts", ...).
    unit_name: str = field(init=False, default="units")

    def drop_detail(self, base: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict:
        """:meth:`units_drop_detail` of both sides' ``unit_scores`` (one scoring of each side). STS
        overrides it (SE only)."""
        return self.units_drop_detail(self.unit_scores(base), self.unit_scores(other))

    def units_drop_detail(self, ub: np.ndarray, uo: np.ndarray) -> dict:
        """From the per-unit scores of a base and another model: ``se``, the standard error (points) of
        main_score(base) - main_score(other) from the sampling of the task's units, paired over the same
        units (how precisely this task's data measures a drop); and how the drop is made up of units:
        how many there are, how many changed (``worse`` / ``better``), and ``largest_unit``, the one
        unit whose change moves the main score most (points of the score, positive = a drop)."""
        d = np.asarray(ub, dtype=np.float64) - np.asarray(uo, dtype=np.float64)
        tol = 1e-9   # points; unit scores of identical embeddings are bit-identical
        i = int(np.argmax(np.abs(d)))
        return {"se": metrics.paired_standard_error(ub, uo), "units": int(d.size), "unit_name": self.unit_name,
                "changed": int((np.abs(d) > tol).sum()), "worse": int((d > tol).sum()),
                "better": int((d < -tol).sum()), "largest_unit": float(d[i] / d.size)}

    def info(self) -> dict:
        """Description of the task for the report."""
        return {"name": self.name, "type": self.type, "languages": self.languages,
                "main_score": self.main_score_name, "description": self.description,
                "sizes": self.sizes(), "source": self.source.as_dict()}


# ---- task types ----------------------------------------------------------------------------------

@dataclass
class STSTask(Task):
    """Pairs of texts with human similarity scores; main score cosine Spearman."""

    texts: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    def __post_init__(self):
        self.main_score_name = "cosine_spearman"
        self.unit_name = "pairs"

    def groups(self):
        """One group: the distinct texts of the pairs, no prompt type."""
        return [TextGroup("texts", self.texts, None)]

    def evaluate(self, emb):
        """Spearman's rho of the pairs' cosines with the human scores."""
        e = emb["texts"]
        i = [p[0] for p in self.pairs]
        j = [p[1] for p in self.pairs]
        rho = metrics.cosine_spearman(e[i], e[j], [p[2] for p in self.pairs])
        return {"main_score": 100 * rho, "cosine_spearman": rho}

    def drop_detail(self, base, other):
        """Standard error of the drop only: Spearman's rho is not a mean over pairs, so the pairs are
        bootstrapped and there is no per-unit breakdown."""
        i, j = [p[0] for p in self.pairs], [p[1] for p in self.pairs]
        cos = [row_cosines(e["texts"][i], e["texts"][j]) for e in (base, other)]
        return {"se": 100 * metrics.spearman_difference_standard_error([p[2] for p in self.pairs], *cos)}

    def sizes(self):
        """Texts and pairs."""
        return {"texts": len(self.texts), "pairs": len(self.pairs)}


@dataclass
class RetrievalTask(Task):
    """Queries against one corpus with relevance judgements; main score nDCG@10."""

    queries: list[str] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)
    relevant: list[dict[int, int]] = field(default_factory=list)  # per query {corpus index: grade}

    def __post_init__(self):
        self.main_score_name = "ndcg_at_10"
        self.unit_name = "queries"

    def groups(self):
        """Queries (query side) and the corpus (document side)."""
        return [TextGroup("queries", self.queries, "query"), TextGroup("corpus", self.corpus, "document")]

    def _relevance_and_scores(self, emb):
        scores = cosine_matrix(emb["queries"], emb["corpus"])
        rel = np.zeros_like(scores, dtype=np.float64)
        for q, judged in enumerate(self.relevant):
            for d, grade in judged.items():
                rel[q, d] = grade
        return rel, scores

    def evaluate_units(self, emb):
        """nDCG@10 over the whole corpus, with recall@10 beside it; units: nDCG@10 of each query, in points."""
        rel, scores = self._relevance_and_scores(emb)
        ndcg = metrics.ndcg_at_k(rel, scores, k=10)
        # recall@10 as a secondary number: easier to read than nDCG for one-relevant-document queries
        top = np.argsort(-scores, axis=1)[:, :10]
        recall = float(np.mean([len(set(t) & set(r)) / len(r) for t, r in zip(top.tolist(), self.relevant)]))
        units = 100 * metrics.ndcg_per_query(rel, scores, k=10)
        return {"main_score": 100 * ndcg, "ndcg_at_10": ndcg, "recall_at_10": recall}, units

    def evaluate(self, emb):
        """nDCG@10 over the whole corpus, with recall@10 beside it."""
        return self.evaluate_units(emb)[0]

    def sizes(self):
        """Queries and corpus documents."""
        return {"queries": len(self.queries), "corpus": len(self.corpus)}


@dataclass
class RerankingTask(Task):
    """Each query reranks its own candidate list; main score MAP (mteb's ``map_at_1000``)."""

    queries: list[str] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)
    candidates: list[list[int]] = field(default_factory=list)   # per query: corpus indices
    relevant: list[set[int]] = field(default_factory=list)      # per query: relevant corpus indices

    def __post_init__(self):
        self.main_score_name = "map_at_1000"
        self.unit_name = "queries"

    def groups(self):
        """Queries (query side) and the candidate documents (document side)."""
        return [TextGroup("queries", self.queries, "query"), TextGroup("corpus", self.corpus, "document")]

    def _ranked(self, emb):
        sims = cosine_matrix(emb["queries"], emb["corpus"])
        rels = [[int(c in r) for c in cands] for cands, r in zip(self.candidates, self.relevant)]
        return rels, [sims[q, cands] for q, cands in enumerate(self.candidates)]

    def evaluate_units(self, emb):
        """Mean average precision over the queries' candidate lists; units: each query's average
        precision, in points."""
        ranked = self._ranked(emb)
        m = metrics.mean_average_precision(*ranked)
        return {"main_score": 100 * m, "map_at_1000": m}, 100 * metrics.average_precisions(*ranked)

    def evaluate(self, emb):
        """Mean average precision over the queries' candidate lists."""
        return self.evaluate_units(emb)[0]

    def sizes(self):
        """Queries, corpus documents and candidates per query."""
        return {"queries": len(self.queries), "corpus": len(self.corpus),
                "candidates_per_query": len(self.candidates[0]) if self.candidates else 0}


@dataclass
class ClassificationTask(Task):
    """Logistic regression on embeddings, mteb's protocol; main score accuracy."""

    train_texts: list[str] = field(default_factory=list)
    train_labels: list[str] = field(default_factory=list)
    test_texts: list[str] = field(default_factory=list)
    test_labels: list[str] = field(default_factory=list)
    samples_per_label: int = 32
    n_experiments: int = 10

    def __post_init__(self):
        self.main_score_name = "accuracy"
        self.unit_name = "test texts"
        # The training subsets depend on the labels only; embed just the texts some experiment uses.
        self._experiments = metrics.undersample_experiments(self.train_labels, self.samples_per_label,
                                                            self.n_experiments, seed=42)
        self._used = sorted({i for exp in self._experiments for i in exp})

    def groups(self):
        """The training texts some experiment uses, and the test texts."""
        return [TextGroup("train", [self.train_texts[i] for i in self._used], None),
                TextGroup("test", self.test_texts, None)]

    def _pool(self, emb):
        # Scatter the embedded training texts back to pool positions so mteb's indices apply unchanged.
        pool = np.zeros((len(self.train_texts), emb["train"].shape[1]), dtype=np.float32)
        pool[self._used] = emb["train"]
        return pool

    def evaluate_units(self, emb):
        """Mean accuracy of the experiments' classifiers on the test set; units: per test text, the
        share of experiments that label it correctly, in points (both from one set of fits)."""
        correct = metrics.classification_correctness(self._pool(emb), self.train_labels, emb["test"],
                                                     self.test_labels, experiments=self._experiments, seed=42)
        acc, per = metrics.experiment_accuracies(correct)
        return {"main_score": 100 * acc, "accuracy": acc, "accuracy_per_experiment": per}, 100 * correct.mean(axis=0)

    def evaluate(self, emb):
        """Mean accuracy of the experiments' classifiers on the test set."""
        return self.evaluate_units(emb)[0]

    def sizes(self):
        """Pool, embedded training texts, test texts, labels and the protocol's settings."""
        return {"train_pool": len(self.train_texts), "train_embedded": len(self._used),
                "test": len(self.test_texts), "labels": len(set(self.train_labels)),
                "samples_per_label": self.samples_per_label, "n_experiments": self.n_experiments}


@dataclass
class ClusteringTask(Task):
    """k-means on embeddings, mteb's bootstrap protocol; main score V-measure."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    n_bootstrap: int = 10
    cluster_size: int = 16_384   # mteb's max_documents_per_cluster

    def __post_init__(self):
        self.main_score_name = "v_measure"
        self.unit_name = "k-means bootstraps"

    def groups(self):
        """One group: the texts to cluster."""
        return [TextGroup("texts", self.texts, None)]

    def evaluate_units(self, emb):
        """Mean V-measure over the k-means bootstraps; units: the V-measure of each bootstrap, in
        points (each is one k-means run, paired across models by its seed)."""
        v, per = metrics.clustering_v_measure(emb["texts"], self.labels, n_bootstrap=self.n_bootstrap,
                                              cluster_size=self.cluster_size, seed=42)
        return {"main_score": 100 * v, "v_measure": v, "v_measure_per_bootstrap": per}, 100 * np.asarray(per)

    def evaluate(self, emb):
        """Mean V-measure over the k-means bootstraps."""
        return self.evaluate_units(emb)[0]

    def sizes(self):
        """Texts, clusters and the bootstrap settings."""
        return {"texts": len(self.texts), "clusters": len(set(self.labels)), "bootstraps": self.n_bootstrap,
                "bootstrap_size": self.cluster_size}
