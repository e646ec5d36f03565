"""Significance: Demšar (2006)'s published example, DeLong against a direct implementation of the 1988 paper's
formulas, bootstrap coverage of a known AUROC difference, pixel counts against the exact metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ad_core import metrics
from ad_core.analysis import significance as sg

# Demšar (2006), Table 6: AUC of C4.5 and three variants on 14 UCI data sets. The paper's average ranks
# (3.143, 2.000, 2.893, 1.964) come from unrounded values: with the table's rounded numbers, voting ties
# C4.5+cf with C4.5+m+cf at 0.975; the paper ranks C4.5+cf first there, hence 0.97501.
DEMSAR = pd.DataFrame(
    [[0.763, 0.768, 0.771, 0.798], [0.599, 0.591, 0.590, 0.569], [0.954, 0.971, 0.968, 0.967],
     [0.628, 0.661, 0.654, 0.657], [0.882, 0.888, 0.886, 0.898], [0.936, 0.931, 0.916, 0.931],
     [0.661, 0.668, 0.609, 0.685], [0.583, 0.583, 0.563, 0.625], [0.775, 0.838, 0.866, 0.875],
     [1.000, 1.000, 1.000, 1.000], [0.940, 0.962, 0.965, 0.962], [0.619, 0.666, 0.614, 0.669],
     [0.972, 0.981, 0.97501, 0.975], [0.957, 0.978, 0.946, 0.970]],
    columns=["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"],
)


def test_friedman_nemenyi_reproduce_demsar_2006() -> None:
    test = sg.rank_test(DEMSAR)
    assert test.average_ranks.round(3).to_dict() == {"C4.5+m+cf": 1.964, "C4.5+m": 2.0, "C4.5+cf": 2.893, "C4.5": 3.143}
    assert list(test.average_ranks.index) == ["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]  # best first
    assert test.chi2 == pytest.approx(9.28, abs=0.005)  # "chi²_F = 9.28"
    assert test.f == pytest.approx(3.69, abs=0.005)  # "F_F = 3.69"
    assert test.p_f < 0.05  # "the critical value of F(3, 39) for alpha = 0.05 is 2.85": rejected
    assert stats.f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.01)
    assert test.cd == pytest.approx(1.25, abs=0.005)  # "CD = 2.569 sqrt(4*5 / (6*14)) = 1.25"
    # "...the data is not sufficient to conclude whether C4.5+m+cf and C4.5 are significantly different":
    # at 0.05 every difference is below CD, one clique holds all four.
    assert test.cliques == [["C4.5+m+cf", "C4.5+m", "C4.5+cf", "C4.5"]]
    assert not test.different("C4.5+m+cf", "C4.5")
    # At 0.10, CD = 1.12: C4.5+m and C4.5+m+cf are significantly better than C4.5 (rank gaps 1.14 and 1.18);
    # nothing can be said about C4.5+cf, which sits in both groups, as in the paper's discussion.
    loose = sg.rank_test(DEMSAR, alpha=0.10)
    assert loose.cd == pytest.approx(1.12, abs=0.005)
    assert loose.different("C4.5+m+cf", "C4.5") and loose.different("C4.5+m", "C4.5")
    assert not loose.different("C4.5+cf", "C4.5") and not loose.different("C4.5+m+cf", "C4.5+cf")
    assert loose.cliques == [["C4.5+m+cf", "C4.5+m", "C4.5+cf"], ["C4.5+cf", "C4.5"]]


def test_nemenyi_p_values_agree_with_the_critical_difference() -> None:
    test = sg.rank_test(DEMSAR, alpha=0.10)
    for a in test.average_ranks.index:
        for b in test.average_ranks.index:
            if a != b:
                beyond_cd = abs(test.average_ranks[a] - test.average_ranks[b]) > test.cd
                assert (test.pvalues.at[a, b] < 0.10) == beyond_cd, (a, b)


def test_wilcoxon_holm_matches_scipy_with_holms_step_down() -> None:
    test = sg.rank_test(DEMSAR, posthoc="wilcoxon-holm")
    pairs = [(a, b) for i, a in enumerate(DEMSAR.columns) for b in DEMSAR.columns[i + 1:]]
    raw = [stats.wilcoxon(DEMSAR[a], DEMSAR[b], zero_method="zsplit").pvalue for a, b in pairs]
    order = np.argsort(raw)
    holm = np.maximum.accumulate([min(1.0, (len(raw) - r) * raw[i]) for r, i in enumerate(order)])
    for rank, i in enumerate(order):
        a, b = pairs[i]
        assert test.pvalues.at[a, b] == pytest.approx(holm[rank], rel=1e-9)
    assert test.cd is None and "Holm" in test.summary()


def test_rank_test_refuses_too_few_methods() -> None:
    with pytest.raises(ValueError, match=">= 3 methods"):
        sg.rank_test(DEMSAR.iloc[:, :2])


def _delong_1988(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong, DeLong & Clarke-Pearson (1988) written out: psi kernel over all (anomalous, normal) pairs."""
    def components(s: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        x, y = s[labels == 1], s[labels == 0]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10_a, v01_a = components(a)
    auc_b, v10_b, v01_b = components(b)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    s = s10 / len(v10_a) + s01 / len(v01_a)
    z = (auc_a - auc_b) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return z, 2 * stats.norm.sf(abs(z))


def test_delong_equals_the_papers_formulas_with_ties() -> None:
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(70), np.ones(45)].astype(int)
    a = np.round(rng.normal(size=115) + 1.2 * labels, 1)  # rounded: many ties
    b = np.round(0.6 * a + rng.normal(size=115) * 0.8 + 0.3 * labels, 1)  # correlated with a
    result = sg.delong_test(labels, a, b)
    z, p = _delong_1988(labels, a, b)
    assert result.auc_a == pytest.approx(metrics.image_auroc(labels, a), abs=1e-12)
    assert result.auc_b == pytest.approx(metrics.image_auroc(labels, b), abs=1e-12)
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p == pytest.approx(p, rel=1e-9)
    assert sg.delong_test(labels, a, a).p == 1.0


def test_weighted_auroc_is_the_auroc_of_the_repeated_images() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(size=60) + labels, 1)
    weights = rng.integers(0, 4, size=(5, 60)).astype(float)
    weights[:, np.flatnonzero(labels)[0]] += 1
    weights[:, np.flatnonzero(~labels)[0]] += 1
    got = sg.weighted_auroc(labels, scores, weights)
    for w, value in zip(weights.astype(int), got, strict=True):
        take = np.repeat(np.arange(60), w)
        assert value == pytest.approx(metrics.image_auroc(labels[take], scores[take]), abs=1e-12)


def test_bootstrap_interval_covers_a_known_difference() -> None:
    """Binormal scores with unit variance: AUROC = Phi(d / sqrt 2). A (d = 1.5) vs B (d = 1.0): the true
    difference is 0.0963. Over 60 independent test sets of 150 images, the 95 % interval covers it in about
    95 % of them (at least 51 of 60 is far from chance for a correct interval: P < 0.01 at 95 % coverage)."""
    truth = stats.norm.cdf(1.5 / np.sqrt(2)) - stats.norm.cdf(1.0 / np.sqrt(2))
    rng = np.random.default_rng(7)
    covered = excludes_zero = 0
    for _ in range(60):
        labels = (np.arange(150) < 60).astype(int)
        shared = rng.normal(size=150)  # both methods see the same image: correlated errors (paired)
        a = 0.6 * shared + 0.8 * rng.normal(size=150) + 1.5 * labels
        b = 0.6 * shared + 0.8 * rng.normal(size=150) + 1.0 * labels
        diff = sg.paired_bootstrap(sg.Group.of(labels, a, b), n_boot=1000, seed=1)
        covered += diff.low <= truth <= diff.high
        excludes_zero += diff.significant
    assert covered >= 51
    assert excludes_zero >= 20  # the paired test has power here; an unpaired mix-up would lose most of it


def test_bootstrap_is_seeded_and_centred_on_the_full_sample_difference() -> None:
    rng = np.random.default_rng(2)
    labels = (np.arange(80) < 30).astype(int)
    a, b = rng.normal(size=80) + labels, rng.normal(size=80) + 0.9 * labels
    one = sg.paired_bootstrap(sg.Group.of(labels, a, b), seed=5)
    assert one == sg.paired_bootstrap(sg.Group.of(labels, a, b), seed=5)
    assert one != sg.paired_bootstrap(sg.Group.of(labels, a, b), seed=6)
    assert one.diff == pytest.approx(metrics.image_auroc(labels, a) - metrics.image_auroc(labels, b), abs=1e-12)
    assert one.low < one.diff < one.high
    assert len(one.delong_p) == 1 and "DeLong p" in one.text()
    # A method compared with itself: a zero-width interval at 0, never significant.
    same = sg.paired_bootstrap(sg.Group.of(labels, a, a))
    assert (same.low, same.high, same.significant) == (0.0, 0.0, False)


def test_bootstrap_over_seeds_and_classes_averages_like_the_leaderboard() -> None:
    rng = np.random.default_rng(4)
    groups, means_a, means_b = [], [], []
    for n in (40, 70):
        labels = (np.arange(n) < n // 3).astype(int)
        a = rng.normal(size=(3, n)) + 1.2 * labels  # 3 seeds
        b = rng.normal(size=(2, n)) + 0.8 * labels  # 2 seeds
        groups.append(sg.Group.of(labels, a, b))
        means_a.append(np.mean([metrics.image_auroc(labels, s) for s in a]))
        means_b.append(np.mean([metrics.image_auroc(labels, s) for s in b]))
    diff = sg.paired_bootstrap(groups, n_boot=500)
    assert diff.a == pytest.approx(np.mean(means_a), abs=1e-12)
    assert diff.b == pytest.approx(np.mean(means_b), abs=1e-12)
    assert diff.n_images == 110 and diff.delong_p == ()
    ap = sg.paired_bootstrap(groups, metric="image_ap", n_boot=50)
    assert ap.low <= ap.high
    with pytest.raises(ValueError, match="PixelCounts"):
        sg.paired_bootstrap(groups, metric="aupro")


def _maps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    labels = np.zeros(n, dtype=int)
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.integers(6, size - 6, 2).tolist() + [rng.integers(2, 6)]
            masks[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[i] = 1
    maps = rng.normal(size=(n, size, size)).astype(np.float32) + 1.5 * masks
    return labels, masks, maps


def test_pixel_counts_give_the_exact_metrics_within_the_grid_error() -> None:
    labels, masks, maps = _maps(24, 48, 0)
    counts = sg.PixelCounts.of(masks, maps)
    ones = np.ones((1, 24))
    assert counts.metric("pixel_auroc", ones)[0] == pytest.approx(metrics.pixel_auroc(masks, maps), abs=2e-3)
    assert counts.metric("aupro", ones)[0] == pytest.approx(metrics.aupro(masks, maps), abs=2e-3)
    # A resample is the test set with repeated images.
    w = np.ones(24, dtype=int)
    w[[0, 13, 20]] = [3, 0, 2]
    take = np.repeat(np.arange(24), w)
    got = counts.metric("aupro", w[None].astype(float))[0]
    assert got == pytest.approx(metrics.aupro(masks[take], maps[take]), abs=2e-3)


def test_pixel_bootstrap_is_centred_on_the_exact_difference() -> None:
    labels, masks, maps = _maps(30, 40, 1)
    better = maps + 0.8 * masks  # the same maps with stronger anomalies
    exact_a, exact_b = metrics.aupro(masks, better), metrics.aupro(masks, maps)
    diff = sg.pixel_bootstrap(labels, sg.PixelCounts.of(masks, better), sg.PixelCounts.of(masks, maps), "aupro",
                              exact_a, exact_b, n_boot=400)
    assert diff.diff == pytest.approx(exact_a - exact_b)
    assert diff.low < diff.diff < diff.high
    assert diff.significant  # every region is covered better in `better`
    same = sg.pixel_bootstrap(labels, sg.PixelCounts.of(masks, maps), sg.PixelCounts.of(masks, maps),
                              "pixel_auroc", 0.9, 0.9, n_boot=100)
    assert not same.significant


# --- the leaderboard's evidence ------------------------------------------------------------------------------


def test_board_evidence_marks_a_best_entry_that_is_not_significantly_better(url: str) -> None:
    """patchcore leads twin (a near copy of its scores) by a hair and weak by a lot: the table marks the best
    entries '≈' where the interval of the lead over the second includes 0, and the CD test ranks all three."""
    from ad_core.analysis import leaderboard as lb
    from dashboard.sample_data import Image, store_job
    from db import results

    rng = np.random.default_rng(11)
    for category in ("bottle", "cable", "grid", "screw"):
        labels = (np.arange(90) < 40).astype(int)
        paths = [f"/data/{category}/{i:03d}.png" for i in range(90)]
        for seed in (0, 1):
            strong = rng.normal(size=90) + 2.0 * labels
            scores = {"patchcore": strong, "twin": strong + rng.normal(size=90) * 0.05,
                      "weak": rng.normal(size=90) + 0.5 * labels}
            for method, s in scores.items():
                images = [Image(p, int(y), "good" if y == 0 else "crack", float(v)) for p, y, v in
                          zip(paths, labels, s, strict=True)]
                store_job(method, "mvtec", "/data", category, seed,
                          {"image_auroc": metrics.image_auroc(labels, s)}, images)
    board = results.leaderboard("mvtec", "image_auroc")
    scores = results.image_scores_frame(board.seed_values["job_id"].dropna().astype(int).unique())
    evidence = sg.board_evidence(board, scores, n_boot=500)
    for column in [*board.categories, lb.MEAN]:
        top, second = evidence.best[column], evidence.second[column]
        assert {top, second} == {"patchcore (fast)", "twin (fast)"}
        lead = evidence.verdict(column)
        assert lead is not None, evidence.reason
        assert lead.a == pytest.approx(board.mean.at[top, column], abs=1e-9)  # the table's own numbers
        assert lead.b == pytest.approx(board.mean.at[second, column], abs=1e-9)
        assert not lead.significant  # twin is patchcore plus a little noise
        assert evidence.vs_best[column]["weak (fast)"].significant
        assert len(lead.delong_p) == (0 if column == lb.MEAN else 2)  # one per seed pair
    marked = evidence.marked(board)
    top = evidence.best["bottle"]
    assert sg.NOT_SIGNIFICANT in marked.cell(top, "bottle")
    assert marked.cell("weak (fast)", "bottle") == board.cell("weak (fast)", "bottle")
    assert "not significantly better than the second (95% paired bootstrap over test images, 500 resamples)" \
        in marked.caption()
    assert sg.NOT_SIGNIFICANT not in board.cell(top, "bottle")  # the board itself is unchanged
    assert evidence.ranks is not None and evidence.ranks.n_blocks == 4
    assert evidence.ranks.average_ranks.index[-1] == "weak (fast)"
    assert evidence.ranks.average_ranks["weak (fast)"] == 3.0
    table = evidence.table()
    assert list(table["column"]) == [*board.categories, lb.MEAN] and not table["significant"].any()


def test_board_evidence_for_pixel_metrics_says_where_intervals_are(url: str) -> None:
    from dashboard.sample_data import Image, store_job
    from db import results

    images = [Image(f"/d/{i}.png", i % 2, "x", float(i)) for i in range(6)]
    for method, value in (("a", 0.80), ("b", 0.78)):
        for seed in (0, 1, 2):  # seed std 0.08 for both, gap 0.02
            store_job(method, "mvtec", "/d", "bottle", seed, {"pixel_auroc": value + 0.08 * seed}, images)
    board = results.leaderboard("mvtec", "pixel_auroc")
    evidence = sg.board_evidence(board, results.image_scores_frame([]))
    assert evidence.vs_best == {} and "Run detail" in evidence.reason
    assert evidence.within_seeds["bottle"] and evidence.best["bottle"] == "a (fast)"
    marked = evidence.marked(board)
    assert marked.cell("a (fast)", "bottle").endswith(sg.WITHIN_SEEDS) and sg.NOT_SIGNIFICANT not in marked.cell(
        "a (fast)", "bottle")
    assert evidence.ranks is None and ">= 3 methods" in evidence.rank_reason


def test_export_marks_the_table_and_refuses_scores_that_do_not_give_its_numbers(url: str, capsys) -> None:
    from dashboard.sample_data import Image, store_job
    from workers.cli import main as iad

    labels = (np.arange(40) < 15).astype(int)
    rng = np.random.default_rng(0)
    paths = [f"/d/{i}.png" for i in range(40)]
    for seed in (0, 1):
        base = rng.normal(size=40) + 1.5 * labels
        for method, s in (("a", base), ("b", base + 0.05 * rng.normal(size=40)), ("c", rng.normal(size=40))):
            images = [Image(p, int(y), "x", float(v)) for p, y, v in zip(paths, labels, s, strict=True)]
            for category in ("bottle", "cable"):
                store_job(method, "mvtec", "/d", category, seed, {"image_auroc": metrics.image_auroc(labels, s)},
                          images)
    argv = ["export", "--dataset", "mvtec", "--metric", "image_auroc", "--format", "md", "--significance"]
    assert iad(argv) == 0
    out, err = capsys.readouterr()
    assert sg.NOT_SIGNIFICANT in out and "not significantly better than the second" in out
    assert "Friedman over 2 classes and 3 methods" in err
    assert iad([*argv[:-2], "latex", "--significance"]) == 0
    latex = capsys.readouterr().out
    assert r"$\approx$" in latex and "≈" not in latex
    # A stored value the scores do not give (as after a re-score against another ground truth): no interval.
    store_job("a", "mvtec", "/d", "bottle", 1, {"image_auroc": 0.5}, images)  # re-run replaces seed 1 of a
    assert iad(argv) == 0
    out, err = capsys.readouterr()
    assert "do not reproduce the table's image_auroc" in err
