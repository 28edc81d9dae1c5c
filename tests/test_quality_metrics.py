"""Each metric of the quality suite against a case small enough to compute by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the quality extra is not installed (pip install -e '.[quality]')")

from quality import metrics  # noqa: E402
from quality.prompts import resolve_prompt_name  # noqa: E402


def _unit_pairs(cosines):
    """Pairs of 2-D unit vectors whose cosines are exactly ``cosines``."""
    e1 = np.tile([1.0, 0.0], (len(cosines), 1))
    e2 = np.array([[c, math.sqrt(1 - c * c)] for c in cosines])
    return e1.astype(np.float32), e2.astype(np.float32)


def test_cosine_spearman_hand_computed():
    # cosines 0.9, 0.5, 0.7, 0.1 rank 4, 2, 3, 1; human scores 1..4 rank 1, 2, 3, 4.
    # d = 3, 0, 0, -3; rho = 1 - 6 * 18 / (4 * (16 - 1)) = -0.8
    e1, e2 = _unit_pairs([0.9, 0.5, 0.7, 0.1])
    assert metrics.cosine_spearman(e1, e2, [1, 2, 3, 4]) == pytest.approx(-0.8)
    # monotone agreement gives 1 whatever the scale of the human scores
    e1, e2 = _unit_pairs([0.1, 0.2, 0.6, 0.9])
    assert metrics.cosine_spearman(e1, e2, [0, 1.5, 4, 5]) == pytest.approx(1.0)


def test_ndcg_at_10_hand_computed():
    n_docs = 12
    rel = np.zeros((3, n_docs))
    scores = np.tile(np.linspace(1.0, 0.0, n_docs), (3, 1))  # doc i is ranked i + 1
    rel[0, 1] = 1            # one relevant doc at rank 2: DCG = 1/log2(3), IDCG = 1
    rel[1, 0], rel[1, 3] = 2, 1   # grades 2 and 1 at ranks 1 and 4
    rel[2, 10] = 1           # relevant doc at rank 11: outside the top 10
    q0 = 1 / math.log2(3)
    q1 = (2 / math.log2(2) + 1 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
    assert q0 == pytest.approx(0.63093, abs=1e-5) and q1 == pytest.approx(0.92389, abs=1e-5)
    assert metrics.ndcg_at_k(rel, scores, k=10) == pytest.approx((q0 + q1 + 0.0) / 3)
    with pytest.raises(ValueError, match="relevant"):
        metrics.ndcg_at_k(np.zeros((1, 3)), np.ones((1, 3)))


def test_mean_average_precision_hand_computed():
    # query A: relevant at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6
    # query B: relevant at rank 2 of 3 -> AP = 1/2; candidate lists of different lengths
    rel = [[1, 0, 1, 0], [0, 1, 0]]
    scores = [[0.9, 0.8, 0.7, 0.1], [0.9, 0.5, 0.1]]
    assert metrics.mean_average_precision(rel, scores) == pytest.approx((5 / 6 + 1 / 2) / 2)


def test_v_measure_hand_computed():
    # clusters are pure (homogeneity 1); class 1 is split in two: H(K) = 1.5 bits, H(K|C) = 0.5 bits,
    # completeness = 1 - 0.5/1.5 = 2/3; V = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert metrics.v_measure([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(0.8)
    assert metrics.v_measure([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)


def test_clustering_protocol_separates_two_tight_groups():
    rng = np.random.RandomState(0)
    x = np.vstack([rng.normal([5, 0], 0.1, (20, 2)), rng.normal([-5, 0], 0.1, (20, 2))]).astype(np.float32)
    labels = ["a"] * 20 + ["b"] * 20
    mean, per = metrics.clustering_v_measure(x, labels, n_bootstrap=4, cluster_size=64, seed=42)
    assert mean == pytest.approx(1.0) and len(per) == 4


def test_classification_accuracy_on_separable_toy_set():
    # Symmetric training data puts the logistic-regression boundary at x = 0, so the test point 0.5
    # labelled "b" is the one error: accuracy 4/5.
    x_pool = np.array([[3.0], [4.0], [-3.0], [-4.0]])
    y_pool = ["a", "a", "b", "b"]
    x_test = np.array([[1.0], [2.0], [-1.0], [-2.0], [0.5]])
    y_test = ["a", "a", "b", "b", "b"]
    assert metrics.logistic_regression_accuracy(x_pool, y_pool, x_test, y_test) == pytest.approx(0.8)
    mean, per = metrics.classification_accuracy(x_pool, y_pool, x_test[:4], y_test[:4], samples_per_label=2,
                                                n_experiments=3)
    assert mean == 1.0 and per == [1.0, 1.0, 1.0]


def test_undersampling_follows_mteb_protocol():
    labels = ["a"] * 10 + ["b"] * 6
    exps = metrics.undersample_experiments(labels, samples_per_label=4, n_experiments=5, seed=42)
    assert len(exps) == 5
    for idx in exps:
        assert sorted(labels[i] for i in idx) == ["a"] * 4 + ["b"] * 4
    assert len({tuple(e) for e in exps}) > 1, "successive in-place shuffles must give different training sets"
    assert exps == metrics.undersample_experiments(labels, 4, 5, seed=42)
    # Hand-check experiment 1: one RandomState(42) shuffle of 0..15, then the first 4 of each label.
    order = list(range(16))
    np.random.RandomState(42).shuffle(order)
    first_a = [i for i in order if i < 10][:4]
    first_b = [i for i in order if i >= 10][:4]
    assert sorted(exps[0]) == sorted(first_a + first_b)


def test_fidelity_metrics():
    x = np.random.RandomState(1).randn(30, 8).astype(np.float32)
    assert np.allclose(metrics.paired_cosine(x, 3 * x), 1.0)
    assert np.all(metrics.neighbour_overlap(x, x, k=10) == 1.0)
    # Hand case: points on a line; the nearest neighbour of each by cosine is fixed by angle.
    angles = np.array([0.0, 0.1, 0.3, 1.0])
    pts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert metrics.topk_neighbours(pts, k=1)[:, 0].tolist() == [1, 0, 1, 2]
    t = metrics.truncate_dim(x, 4)
    assert t.shape == (30, 4) and np.allclose(np.linalg.norm(t, axis=1), 1.0)


REAL_PROMPTS = {"query": "q: ", "document": "d: ", "Retrieval": "q: ", "Retrieval-query": "q: ",
                "Retrieval-document": "d: ", "Reranking": "q: ", "STS": "s: ", "Classification": "c: ",
                "Clustering": "k: "}
TINY_PROMPTS = {"query": "q: ", "document": "d: ", "STS": "s: ", "Classification": "c: ", "Clustering": "k: ",
                "Retrieval-query": "q: ", "Retrieval-document": "d: "}


@pytest.mark.parametrize("prompts, task_type, prompt_type, expected", [
    (REAL_PROMPTS, "Retrieval", "query", "Retrieval-query"),
    (REAL_PROMPTS, "Retrieval", "document", "Retrieval-document"),
    (REAL_PROMPTS, "STS", None, "STS"),
    (REAL_PROMPTS, "Classification", None, "Classification"),
    (REAL_PROMPTS, "Clustering", None, "Clustering"),
    (REAL_PROMPTS, "Reranking", "query", "Reranking"),
    (REAL_PROMPTS, "Reranking", "document", "Reranking"),   # task type beats prompt type, as in mteb
    (TINY_PROMPTS, "Reranking", "query", "query"),           # no Reranking prompt: fall back
    (TINY_PROMPTS, "Reranking", "document", "document"),
    (TINY_PROMPTS, "PairClassification", None, None),        # nothing matches: no prompt
    ({**TINY_PROMPTS, "MyTask-query": "x"}, "Retrieval", "query", "MyTask-query"),
    ({**TINY_PROMPTS, "MyTask": "x"}, "Retrieval", "document", "MyTask"),
])
def test_prompt_resolution_order(prompts, task_type, prompt_type, expected):
    assert resolve_prompt_name(prompts, "MyTask", task_type, prompt_type) == expected


def test_per_unit_scores_average_to_the_main_scores():
    rel = np.zeros((3, 12))
    scores = np.tile(np.linspace(1.0, 0.0, 12), (3, 1))
    rel[0, 1], rel[1, 0], rel[2, 10] = 1, 1, 1               # ranks 2, 1 and 11 (outside the top 10)
    per = metrics.ndcg_per_query(rel, scores, k=10)
    assert per == pytest.approx([1 / math.log2(3), 1.0, 0.0])
    assert per.mean() == pytest.approx(metrics.ndcg_at_k(rel, scores, k=10))
    aps = metrics.average_precisions([[1, 0, 1, 0], [0, 1, 0]], [[0.9, 0.8, 0.7, 0.1], [0.9, 0.5, 0.1]])
    assert aps == pytest.approx([5 / 6, 1 / 2])
    # the toy set of test_classification_accuracy_on_separable_toy_set: only the test point 0.5 ("b") is
    # on the wrong side of x = 0, in every experiment
    x_pool = np.array([[3.0], [4.0], [-3.0], [-4.0]])
    y_pool = ["a", "a", "b", "b"]
    x_test = np.array([[1.0], [2.0], [-1.0], [-2.0], [0.5]])
    y_test = ["a", "a", "b", "b", "b"]
    exps = metrics.undersample_experiments(y_pool, 2, 3)
    # per test text, the share of experiments that label it correctly (ClassificationTask's units)
    correct = metrics.classification_correctness(x_pool, y_pool, x_test, y_test, experiments=exps).mean(axis=0)
    assert correct.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert correct.mean() == pytest.approx(metrics.classification_accuracy(x_pool, y_pool, x_test, y_test,
                                                                           experiments=exps)[0])


def test_paired_standard_error_hand_computed():
    # differences 0, 1, 2: sd (ddof 1) = 1, n = 3 -> SE = 1 / sqrt(3); shared offsets cancel
    assert metrics.paired_standard_error([10, 12, 14], [10, 11, 12]) == pytest.approx(1 / math.sqrt(3))
    assert metrics.paired_standard_error([5.0, 7.0], [5.0, 7.0]) == 0.0
    with pytest.raises(ValueError, match="at least 2 units"):
        metrics.paired_standard_error([1.0], [0.5])


def test_drop_detail_hand_computed():
    """How a drop is made up of units: per-unit changes 0, +10, -90, +100 points over 4 units."""
    from quality import datasets as ds
    from quality.tasks import Task

    class FourUnits(Task):
        def groups(self):
            return []

        def evaluate(self, emb):
            return {"main_score": float(np.mean(emb["u"]))}

        def sizes(self):
            return {}

        def unit_scores(self, emb):
            return np.asarray(emb["u"], dtype=np.float64)

    t = FourUnits("toy", "Retrieval", ["eng-Latn"], "", ds.Source("", "", "", "", ""))
    t.unit_name = "queries"
    d = t.drop_detail({"u": [100, 50, 0, 100]}, {"u": [100, 40, 90, 0]})
    assert d == {"se": pytest.approx(np.std([0, 10, -90, 100], ddof=1) / 2), "units": 4, "unit_name": "queries",
                 "changed": 3, "worse": 2, "better": 1, "largest_unit": 25.0}   # unit 4: +100 / 4
    assert t.drop_detail({"u": [1, 2]}, {"u": [1, 2]})["se"] == 0.0


def test_spearman_difference_standard_error_matches_a_spearmanr_loop():
    # Reference: resample the pairs by hand and score each resample with scipy.stats.spearmanr.
    from scipy.stats import spearmanr

    rng = np.random.RandomState(3)
    gold = rng.randint(0, 5, 60).astype(float)           # ties, as human ratings have
    cos_a = gold + rng.normal(0, 1.0, 60)
    cos_b = cos_a + rng.normal(0, 0.5, 60)
    idx = np.random.default_rng(7).integers(0, 60, size=(4000, 60))
    diffs = [spearmanr(gold[i], cos_a[i]).statistic - spearmanr(gold[i], cos_b[i]).statistic for i in idx]
    se = metrics.spearman_difference_standard_error(gold, cos_a, cos_b, resamples=4000, seed=1)
    # two bootstraps of 4,000 resamples each: their SE estimates agree to a few per cent
    assert se == pytest.approx(np.std(diffs, ddof=1), rel=0.08)
    assert metrics.spearman_difference_standard_error(gold, cos_a, cos_b, resamples=200, seed=5) == \
        metrics.spearman_difference_standard_error(gold, cos_a, cos_b, resamples=200, seed=5)   # seeded
    assert metrics.spearman_difference_standard_error(gold, cos_a, cos_a, resamples=50) == 0.0
