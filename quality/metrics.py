"""The main scores of MTEB's task types, computed the way mteb (>= 2) computes them.

All functions take and return plain numpy / Python values on the 0-1 scale; tasks turn them into
points (x 100). scikit-learn and scipy do the arithmetic wherever they have the metric, so these
functions mostly fix the protocol (which pairs, which seeds, which subsamples) around them.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

import numpy as np

from runtime.vectors import cosine_matrix, finish, row_cosines


def truncate_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka truncation: the first ``dim`` values of each row, re-normalised (``runtime.vectors.finish``)."""
    return finish(x, dim)


#: Cosine of row i of ``a`` with row i of ``b``: the suite's name for ``runtime.vectors.row_cosines``.
paired_cosine = row_cosines


# ---- STS ------------------------------------------------------------------------------------------

def cosine_spearman(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> float:
    """MTEB's STS main score ``cosine_spearman``: Spearman's rho between the cosine similarity of each
    pair (row i of emb1 with row i of emb2) and the human score of that pair."""
    from scipy.stats import spearmanr

    cos = row_cosines(emb1, emb2)
    return float(spearmanr(np.asarray(gold, dtype=np.float64), cos.astype(np.float64)).statistic)


# ---- retrieval and reranking ----------------------------------------------------------------------

def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean nDCG@k over queries (MTEB's retrieval main score ``ndcg_at_10``).

    relevance: [queries, docs] graded relevance (0 = not relevant); scores: [queries, docs] similarity.
    Gains are linear in the relevance grade, as in trec_eval (which mteb calls through pytrec_eval), and
    the ideal ranking is over every judged document. Every query must have a relevant document:
    trec_eval only evaluates queries that appear in the judgements.
    """
    from sklearn.metrics import ndcg_score

    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if relevance.shape != scores.shape or relevance.ndim != 2:
        raise ValueError(f"relevance {relevance.shape} and scores {scores.shape} must be the same 2-D shape")
    if not np.all(relevance.max(axis=1) > 0):
        raise ValueError("every query needs at least one relevant document")
    if relevance.shape[1] == 1:  # sklearn refuses a single document; nDCG is then 1 by definition
        return 1.0
    return float(ndcg_score(relevance, scores, k=k))


def ndcg_per_query(relevance: np.ndarray, scores: np.ndarray, k: int = 10) -> np.ndarray:
    """nDCG@k of each query (the values :func:`ndcg_at_k` averages), for standard errors."""
    relevance = np.asarray(relevance, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    return np.array([ndcg_at_k(relevance[q:q + 1], scores[q:q + 1], k=k) for q in range(len(relevance))])


def mean_average_precision(relevance: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]) -> float:
    """Mean over queries of the average precision of each query's candidate ranking (MTEB's reranking
    main score ``map_at_1000``; candidate lists here are far shorter than 1,000, so the cut never
    applies). Candidate lists may differ in length between queries."""
    return float(np.mean(average_precisions(relevance, scores)))


def average_precisions(relevance: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Average precision of each query's candidate ranking (the values :func:`mean_average_precision`
    averages)."""
    from sklearn.metrics import average_precision_score

    aps = []
    for rel, sc in zip(relevance, scores, strict=True):
        rel = np.asarray(rel) > 0
        if not rel.any():
            raise ValueError("every query needs at least one relevant candidate")
        aps.append(average_precision_score(rel, np.asarray(sc, dtype=np.float64)))
    return np.asarray(aps, dtype=np.float64)


# ---- classification -------------------------------------------------------------------------------

def undersample_experiments(labels: Sequence, samples_per_label: int, n_experiments: int,
                            seed: int = 42) -> list[list[int]]:
    """Training indices of each experiment, chosen exactly as mteb's ``AbsTaskClassification``.

    mteb keeps one index list across experiments and, in each experiment, shuffles it in place with a
    fresh ``np.random.RandomState(seed)`` and takes the first ``samples_per_label`` indices of each
    label in that order. Shuffling the already-shuffled list again is what makes the experiments
    differ. The choice depends on the labels only, so every model sees the same training sets.
    """
    idxs = list(range(len(labels)))
    experiments = []
    for _ in range(n_experiments):
        np.random.RandomState(seed).shuffle(idxs)
        counter: dict = defaultdict(int)
        chosen = []
        for i in idxs:
            if counter[labels[i]] < samples_per_label:
                chosen.append(i)
                counter[labels[i]] += 1
        experiments.append(chosen)
    return experiments


def logistic_regression_accuracy(x_train: np.ndarray, y_train: Sequence, x_test: np.ndarray,
                                 y_test: Sequence, seed: int = 42) -> float:
    """Accuracy of mteb's default classifier: ``LogisticRegression(max_iter=100, random_state=seed)``
    fitted on the (unnormalised-as-given) training embeddings."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(list(y_test), logistic_regression_predict(x_train, y_train, x_test, seed)))


def logistic_regression_predict(x_train: np.ndarray, y_train: Sequence, x_test: np.ndarray, seed: int = 42) -> list:
    """Test-set predictions of mteb's default classifier (see :func:`logistic_regression_accuracy`)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(max_iter=100, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(limits=1):  # see clustering_v_measure
        # mteb runs with the same 100-iteration cap and lets it warn; the warning is noise here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, list(y_train))
        return list(clf.predict(x_test))


def classification_correctness(x_pool: np.ndarray, y_pool: Sequence, x_test: np.ndarray, y_test: Sequence, *,
                               experiments: list[list[int]], seed: int = 42) -> np.ndarray:
    """[experiments, test texts] booleans: whether each experiment's classifier (mteb's, trained on
    that experiment's pool indices) labels each test text correctly. Row means are the experiments'
    accuracies, column means each text's share of correct experiments."""
    y_pool, y_test = list(y_pool), np.asarray(list(y_test))
    return np.array([np.asarray(logistic_regression_predict(x_pool[idx], [y_pool[i] for i in idx], x_test, seed))
                     == y_test for idx in experiments], dtype=bool).reshape(len(experiments), len(y_test))


def classification_accuracy(x_pool: np.ndarray, y_pool: Sequence, x_test: np.ndarray, y_test: Sequence, *,
                            samples_per_label: int = 8, n_experiments: int = 10, seed: int = 42,
                            experiments: list[list[int]] | None = None) -> tuple[float, list[float]]:
    """MTEB classification: mean accuracy over ``n_experiments`` logistic regressions, each trained on
    ``samples_per_label`` examples per label drawn from the training pool. Returns (mean, per experiment)."""
    if experiments is None:
        experiments = undersample_experiments(y_pool, samples_per_label, n_experiments, seed)
    return experiment_accuracies(classification_correctness(x_pool, y_pool, x_test, y_test, experiments=experiments,
                                                            seed=seed))


def experiment_accuracies(correct: np.ndarray) -> tuple[float, list[float]]:
    """(mean, per experiment) accuracy from :func:`classification_correctness`'s [experiments, test texts]."""
    accs = [float(a) for a in np.asarray(correct).mean(axis=1)]
    return float(np.mean(accs)), accs


# ---- clustering -----------------------------------------------------------------------------------

def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """V-measure (harmonic mean of homogeneity and completeness), scikit-learn's implementation."""
    from sklearn.metrics.cluster import v_measure_score

    return float(v_measure_score(labels_true, labels_pred))


def clustering_v_measure(x: np.ndarray, labels: Sequence, *, n_bootstrap: int = 10, cluster_size: int = 16_384,
                         batch_size: int = 512, seed: int = 42) -> tuple[float, list[float]]:
    """MTEB's clustering protocol (``AbsTaskClustering``, the "fast" one): ``n_bootstrap`` times draw
    ``cluster_size`` items with replacement (``random.Random(seed).choices``), cluster them with
    ``MiniBatchKMeans(k = number of labels, batch_size=512, n_init=1, random_state=seed)`` and score the
    assignment by V-measure; the main score is the mean. Returns (mean, per bootstrap).

    cluster_size is mteb's ``max_documents_per_cluster`` (default 16,384). On a corpus of a few hundred
    texts that repeats each text many times, which is what mteb does, and it matters: k-means on a
    bootstrap of corpus size lands in a different local optimum from one bootstrap to the next
    (docs/notes/quality.md, finding 1, has the spread of both).
    """
    import warnings

    from sklearn.cluster import MiniBatchKMeans

    labels = np.asarray(labels)
    n = len(labels)
    from threadpoolctl import threadpool_limits

    rng = random.Random(seed)
    model = MiniBatchKMeans(n_clusters=np.unique(labels).size, batch_size=batch_size, init="k-means++",
                            n_init=1, random_state=seed)
    scores = []
    for _ in range(n_bootstrap):
        idx = rng.choices(range(n), k=cluster_size)
        # One BLAS/OpenMP thread: k-means threads fighting the model's for the cores are far slower
        # (docs/notes/quality.md), and the result stops depending on the machine's thread count.
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")  # sklearn's memory-leak note for MKL on Windows, etc.
            assignment = model.fit_predict(x[idx])
        scores.append(v_measure(labels[idx], assignment))
    return float(np.mean(scores)), scores


# ---- fidelity --------------------------------------------------------------------------------------

def topk_neighbours(x: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine (self excluded), best first."""
    sims = cosine_matrix(x, x)
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(x) - 1)
    part = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    """Per row: the fraction of its top-k cosine neighbours under ``a`` that are also top-k under ``b``."""
    na, nb = topk_neighbours(a, k), topk_neighbours(b, k)
    kk = na.shape[1]
    return np.array([len(set(r1) & set(r2)) / kk for r1, r2 in zip(na, nb)], dtype=np.float64)


# ---- standard error of a drop ---------------------------------------------------------------------

def paired_standard_error(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a) - mean(b) when a and b are per-unit values of the same units (queries,
    test texts, bootstraps): sd(a - b) / sqrt(n). Pairing removes what the units share, so this is the
    uncertainty of the difference due to which units the task happened to sample."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"need two 1-D arrays of the same units with at least 2 units, got shape {d.shape}")
    return float(d.std(ddof=1) / np.sqrt(d.size))


def spearman_difference_standard_error(gold: Sequence[float], cos_a: np.ndarray, cos_b: np.ndarray, *,
                                       resamples: int = 1000, seed: int = 0) -> float:
    """Paired bootstrap standard error of spearman(gold, cos_a) - spearman(gold, cos_b) over the pairs
    (Spearman's rho is not a mean over pairs, so the pairs are resampled instead; scipy's bootstrap)."""
    from scipy.stats import bootstrap, spearmanr

    def difference(g, a, b):
        return spearmanr(g, a).statistic - spearmanr(g, b).statistic

    data = tuple(np.asarray(x, dtype=np.float64) for x in (gold, cos_a, cos_b))
    res = bootstrap(data, difference, paired=True, vectorized=False, n_resamples=resamples,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.standard_error)
