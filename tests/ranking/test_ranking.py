"""Ranking, bootstrap and significance against hand-worked tables and scipy."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flare_eval.protocol import load_protocol
from flare_eval.ranking import (
    RANKING_METHODS,
    RankingWarning,
    ResultsTableError,
    best_versus_rest,
    bootstrap_stability,
    holm_adjust,
    kendall_tau_b,
    paired_wilcoxon,
    prepare_results,
    rank,
    ranking_methods,
    ranking_methods_agreement,
    significance,
)
from flare_eval.ranking.arrays import _min_ranks

METRICS = ["DSC", "NSD", "Time", "AUC_GPU", "AUC_CPU"]


def table_from(rows):
    return pd.DataFrame(rows, columns=["team", "case", *METRICS])


@pytest.fixture
def example_results(examples):
    return pd.read_csv(examples.results, dtype={"team": str, "case": str})


HAND = table_from([
    # team, case, DSC, NSD, Time, AUC_GPU, AUC_CPU
    ("a", "1", 0.90, 0.90, 10, 0, 500),
    ("b", "1", 0.90, 0.80, 20, 0, 100),
    ("c", "1", 0.70, 0.95, 30, 100, 100),
    ("a", "2", 0.60, 0.70, 12, 0, 300),
    ("b", "2", 0.80, 0.80, 11, 50, 300),
    ("c", "2", 0.85, 0.60, 40, 0, 200),
])


def test_rank_hand_worked_with_ties():
    # Case 1 ranks (ties at min): DSC a1 b1 c3; NSD b2 a... see below, all by hand:
    # case 1: DSC a1 b1 c3 | NSD c1 a2 b3 | Time a1 b2 c3 | GPU a1 b1 c3 | CPU c1 b1 a3
    # case 2: DSC c1 b2 a3 | NSD b1 a2 c3 | Time b1 a2 c3 | GPU a1 c1 b3 | CPU c1 a2 b2
    # weighted sums (GPU, CPU at 0.5): a = (1+2+1+.5+1.5) + (3+2+2+.5+1) = 14.5
    #                                 b = (1+3+2+.5+.5) + (2+1+1+1.5+1) = 13.5
    #                                 c = (3+1+3+1.5+.5) + (1+3+3+.5+.5) = 17
    ranking = rank(HAND, "flare22")
    assert list(ranking.team) == ["b", "a", "c"]
    assert list(ranking["rank"]) == [1, 2, 3]
    np.testing.assert_allclose(ranking.score, [13.5 / 8, 14.5 / 8, 17 / 8])
    a = ranking.set_index("team").loc["a"]
    assert a.DSC_mean_rank == 2.0 and a.AUC_CPU_mean_rank == 2.5


def test_final_ranks_tie_at_minimum():
    tied = table_from([("x", "1", 0.9, 0.8, 1, 0, 0), ("y", "1", 0.8, 0.9, 1, 0, 0), ("z", "1", 0.1, 0.1, 1, 0, 0)])
    ranking = rank(tied, "flare22")
    assert dict(zip(ranking.team, ranking["rank"])) == {"x": 1, "y": 1, "z": 3}


def test_min_ranks_match_scipy_rankdata():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=(2, 30, 9)).astype(float)
    ours = _min_ranks(values, np.array([True, False]))
    for c in range(30):
        np.testing.assert_array_equal(ours[0, c], stats.rankdata(-values[0, c], method="min"))
        np.testing.assert_array_equal(ours[1, c], stats.rankdata(values[1, c], method="min"))


def test_missing_rows_and_values_get_worst_values_with_warnings():
    table = HAND[~((HAND.team == "c") & (HAND.case == "2"))].copy()
    table.loc[0, "Time"] = np.nan
    with pytest.warns(RankingWarning) as record:
        matrix = prepare_results(table, "flare22")
    messages = " ".join(str(w.message) for w in record)
    assert "team 'c' has no row for 1 case(s) (2)" in messages
    assert "team 'a' has no Time for 1 case(s) (1); they get the worst value 3600" in messages
    c = matrix.teams.index("c")
    assert matrix.values[:, matrix.cases.index("2"), c].tolist() == [0, 0, 3600, 29491200, 360000]
    assert not matrix.observed[:, 1, c].any()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda t: pd.concat([t, t.iloc[[0]]]), r"duplicated \(team, case\) rows: \(a, 1\)"),
        (lambda t: t.rename(columns={"DSC": "DCS"}), "'DCS' looks like a misspelling of metric 'DSC'"),
        (lambda t: t.rename(columns={"NSD": "nsd"}), "'nsd' looks like a misspelling of metric 'NSD'"),
        (lambda t: t.drop(columns="AUC_CPU"), r"missing column\(s\) \['AUC_CPU'\]"),
        (
            lambda t: t.assign(Time=["fast"] + [1] * 5),
            r"column 'Time' has 1 non-numeric value\(s\), e.g. \(a, 1\): 'fast'",
        ),
        (lambda t: t[t.team == "a"], "at least two teams"),
    ],
)
def test_bad_tables_are_clear_errors(change, pattern):
    with pytest.raises(ResultsTableError, match=pattern):
        prepare_results(change(HAND.copy()), "flare22")


def test_other_columns_are_ignored_with_a_warning():
    with pytest.warns(RankingWarning, match=r"ignoring column\(s\) \['comment'\]"):
        rank(HAND.assign(comment="x"), "flare22")


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(1, 6, 12)
    ys = rng.integers(1, 6, (20, 12))
    ours = kendall_tau_b(x, ys)
    expected = [stats.kendalltau(x, y).statistic for y in ys]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert np.isnan(kendall_tau_b(x, np.ones(12)))


def naive_bootstrap_ranking(table, draws, cases):
    """Rank a bootstrap sample by building it as a table: every draw its own pseudo-case."""
    parts = []
    for i, index in enumerate(draws):
        part = table[table.case == cases[index]].copy()
        part["case"] = f"draw{i}"
        parts.append(part)
    return rank(pd.concat(parts), "flare22").set_index("team")["rank"]


def test_bootstrap_equals_naive_recomputation_including_duplicates():
    rng = np.random.default_rng(5)
    rows = [(t, str(c), *rng.random(2), *rng.integers(1, 4, 3)) for t in "pqrst" for c in range(6)]
    table = table_from(rows)
    result = bootstrap_stability(table, "flare22", n_samples=25, seed=11)
    matrix = prepare_results(table, "flare22")
    full = rank(table, "flare22").set_index("team")["rank"].reindex(matrix.teams)
    assert any(len(set(d)) < len(d) for d in result.draws)  # samples contain duplicated cases
    for s, draws in enumerate(result.draws):
        expected = naive_bootstrap_ranking(table, draws, matrix.cases).reindex(matrix.teams)
        np.testing.assert_array_equal(result.ranks[s], expected.to_numpy())
        assert result.samples.kendall_tau[s] == pytest.approx(stats.kendalltau(full, expected).statistic)


def test_duplicated_case_counts_twice_not_jointly():
    # challengeR ranks a case drawn twice jointly with its copy (ranks 1, 3, 5; copies="joint" below):
    # by default a draw of case 0 twice must equal ranking a table with two separate copies.
    table = HAND
    draws = np.array([[0, 0]])
    result = bootstrap_stability(table, "flare22", draws=draws)
    doubled = pd.concat([HAND[HAND.case == "1"], HAND[HAND.case == "1"].assign(case="1b")])
    expected = rank(doubled, "flare22").set_index("team")["rank"].reindex(result.teams).to_numpy()
    np.testing.assert_array_equal(result.ranks[0], expected)
    assert result.seed == -1


def joint_bootstrap_ranking(table, draws, cases, protocol):
    """challengeR's reading, built literally: the copies of a case keep its id and are ranked together.

    Within each case id, every entry (k copies of each team) is ranked against all the others, ties at the
    minimum (pandas' ``method="min"``, R's ``ties.method = "min"``); a team's score is the weighted mean of its
    entries' ranks; the final ranks are the scores ranked, ties at the minimum.
    """
    sample = pd.concat([table[table.case == cases[index]] for index in draws], ignore_index=True)
    total = 0.0
    for metric in protocol.ranking_metrics:
        entry_ranks = sample.groupby("case")[metric.name].rank(method="min", ascending=not metric.higher_is_better)
        total = total + metric.weight * entry_ranks
    score = total.groupby(sample["team"]).mean()
    return score.rank(method="min")


def test_joint_copies_reproduce_challenger_duplicate_ranking():
    rng = np.random.default_rng(7)
    rows = [(t, str(c), *rng.random(2), *rng.integers(1, 4, 3)) for t in "pqrstu" for c in range(7)]
    table = table_from(rows)
    protocol = load_protocol("flare22")
    result = bootstrap_stability(table, "flare22", n_samples=40, seed=3, copies="joint")
    separate = bootstrap_stability(table, "flare22", n_samples=40, seed=3)
    matrix = prepare_results(table, "flare22")
    assert any(max(np.bincount(d)) >= 3 for d in result.draws)  # some case drawn three times or more
    for s, draws in enumerate(result.draws):
        expected = joint_bootstrap_ranking(table, draws, matrix.cases, protocol).reindex(matrix.teams)
        np.testing.assert_array_equal(result.ranks[s], expected.to_numpy())
    assert not np.array_equal(result.ranks, separate.ranks)  # the two readings do differ on these draws
    # Each metric alone follows the same rule.
    dsc_only = dataclasses.replace(protocol, ranking_metrics=protocol.ranking_metrics[:1])
    for s, draws in enumerate(result.draws[:10]):
        expected = joint_bootstrap_ranking(table, draws, matrix.cases, dsc_only).reindex(matrix.teams)
        full = joint_bootstrap_ranking(table, range(len(matrix.cases)), matrix.cases, dsc_only).reindex(matrix.teams)
        assert result.samples.kendall_tau_DSC[s] == pytest.approx(stats.kendalltau(full, expected).statistic)


def test_copies_must_be_named():
    with pytest.raises(ValueError, match="copies must be one of"):
        bootstrap_stability(HAND, "flare22", n_samples=2, copies="challenger")


def test_bootstrap_is_reproducible_and_summarised(example_results):
    with pytest.warns(RankingWarning):
        a = bootstrap_stability(example_results, "flare22", n_samples=50, seed=7)
    b = bootstrap_stability(example_results, "flare22", n_samples=50, seed=7)  # the same table: its warning was given
    pd.testing.assert_frame_equal(a.samples, b.samples)
    assert list(a.samples.columns) == ["sample", "kendall_tau", *[f"kendall_tau_{m}" for m in METRICS]]
    dist = a.rank_distribution
    assert list(dist.columns) == ["team", "rank", "median_rank", "rank_2.5", "rank_97.5", "share_first"]
    assert dist.share_first.sum() >= 1.0 - 1e-12
    top = dist.iloc[0]
    assert top.share_first == pytest.approx((a.ranks[:, a.teams.index(top.team)] == 1).mean())
    summary = a.summary()
    assert summary.loc[0, "median"] == pytest.approx(a.samples.kendall_tau.median())


def r_wilcox_paired_p(x, y, alternative):
    """R's wilcox.test(x, y, paired=TRUE, exact=FALSE, correct=TRUE), written from its documented algorithm."""
    d = np.asarray(x, float) - np.asarray(y, float)
    d = d[~np.isnan(d)]
    d = d[d != 0]
    n = d.size
    r = stats.rankdata(np.abs(d))
    v = r[d > 0].sum()
    _, ties = np.unique(r, return_counts=True)
    sigma = np.sqrt(n * (n + 1) * (2 * n + 1) / 24 - np.sum(ties**3 - ties) / 48)
    z = v - n * (n + 1) / 4
    correction = 0.5 if alternative == "greater" else -0.5
    with np.errstate(divide="ignore"):  # no non-zero difference: sigma = 0 and z = -inf or inf, as in R
        z = (z - correction) / sigma
    return stats.norm.sf(z) if alternative == "greater" else stats.norm.cdf(z)


def test_significance_matches_r_formula_and_scipy(example_results):
    with pytest.warns(RankingWarning):
        tests = significance(example_results, "flare22", adjust="none")
    table = example_results
    for metric, alternative in (("DSC", "greater"), ("Time", "less")):
        for a, b in (("teamA", "teamB"), ("teamL", "teamC"), ("teamC", "teamL")):
            x = table[table.team == a].set_index("case")[metric]
            y = table[table.team == b].set_index("case")[metric]
            shared = x.index.intersection(y.index)
            expected = r_wilcox_paired_p(x[shared], y[shared], alternative)
            got = tests[(tests.metric == metric) & (tests.team_a == a) & (tests.team_b == b)].iloc[0]
            assert got.p_value == pytest.approx(expected, rel=1e-10)
            assert got.n_cases == len(shared)
            reference = stats.wilcoxon(x[shared], y[shared], alternative=alternative, zero_method="wilcox",
                                       correction=True, method="approx")
            assert got.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert len(tests) == 5 * 12 * 11


def test_significance_identical_teams_give_one_as_r_does():
    # R: wilcox.test(x, x, paired=TRUE, exact=FALSE, alternative="greater") has z = -Inf, p = 1.
    same = pd.concat([HAND[HAND.team == "a"], HAND[HAND.team == "a"].assign(team="a2")])
    tests = significance(same, "flare22")
    assert (tests.p_value == 1.0).all() and not tests.significant.any()


def test_never_differing_pair_counts_in_holm_as_in_r():
    # The minimal case; R 4.2.2 gives p(a>b) = 1 and Holm p(a>c) = 0.5207 (ties 0.2, 0.2).
    rows = [(t, str(c), v, 0.5, 1, 0, 1) for t, values in (("a", (0.9, 0.8, 0.85)), ("b", (0.9, 0.8, 0.85)),
                                                           ("c", (0.7, 0.6, 0.5)))
            for c, v in enumerate(values)]
    tests = significance(table_from(rows), "flare22").set_index(["metric", "team_a", "team_b"]).sort_index()
    assert tests.loc[("DSC", "a", "b"), "p_value"] == 1.0
    raw = r_wilcox_paired_p([0.9, 0.8, 0.85], [0.7, 0.6, 0.5], "greater")
    assert tests.loc[("DSC", "a", "c"), "p_value"] == pytest.approx(raw, rel=1e-12)
    assert tests.loc[("DSC", "a", "c"), "p_adjusted"] == pytest.approx(6 * raw, rel=1e-12)
    assert tests.loc[("DSC", "a", "c"), "p_adjusted"] == pytest.approx(0.520704, abs=1e-6)
    # Every team identical in NSD: every one-sided p is 1, never NaN.
    assert (tests.loc["NSD", "p_value"] == 1.0).all()


def test_paired_wilcoxon_matches_scipy_row_by_row_with_ties_zeros_and_gaps():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, (40, 15)).astype(float) / 4
    b = rng.integers(0, 6, (40, 15)).astype(float) / 4
    a[rng.random(a.shape) < 0.1] = np.nan
    for alternative in ("greater", "less"):
        ours = paired_wilcoxon(a, b, alternative)
        for row in range(40):
            keep = ~np.isnan(a[row]) & ~np.isnan(b[row])
            expected = r_wilcox_paired_p(a[row][keep], b[row][keep], alternative)
            if np.all(a[row][keep] == b[row][keep]):
                expected = 1.0
            else:
                reference = stats.wilcoxon(a[row][keep], b[row][keep], alternative=alternative,
                                           zero_method="wilcox", correction=True, method="approx").pvalue
                assert ours[row] == pytest.approx(reference, rel=1e-12)
            assert ours[row] == pytest.approx(expected, rel=1e-12)


def test_alpha_decision_includes_the_boundary_as_challenger():
    rows = [(t, str(c), v, 0.5, 1, 0, 1) for t, values in (("a", (0.9, 0.8, 0.85)), ("c", (0.7, 0.6, 0.5)))
            for c, v in enumerate(values)]
    raw = r_wilcox_paired_p([0.9, 0.8, 0.85], [0.7, 0.6, 0.5], "greater")
    tests = significance(table_from(rows), "flare22", adjust="none", alpha=raw)
    assert tests.set_index(["metric", "team_a"]).loc[("DSC", "a"), "significant"]


def test_single_ranking_metric_protocol_ranks(tmp_path):
    protocol = load_protocol("flare22")
    only_dsc = dataclasses.replace(protocol, ranking_metrics=protocol.ranking_metrics[:1])
    table = HAND[["team", "case", "DSC"]]
    ranking = rank(table, only_dsc)
    assert dict(zip(ranking.team, ranking["rank"])) == {"a": 2, "b": 1, "c": 2}
    assert len(significance(table, only_dsc)) == 6


def test_teams_without_common_cases_get_nan_and_a_spelling_hint():
    renamed = HAND.assign(case=np.where(HAND.team == "c", "Case_0" + HAND.case, "case_" + HAND.case))
    with pytest.warns(RankingWarning) as record:
        tests = significance(renamed, "flare22")
    messages = " ".join(str(w.message) for w in record)
    assert "team 'c' has no case in common with 2 team(s) (a, b)" in messages
    assert "'Case_01' looks like 'case_1'" in messages
    with_c = tests[(tests.team_a == "c") | (tests.team_b == "c")]
    assert with_c.p_value.isna().all() and not with_c.significant.any()
    assert with_c.n_cases.eq(0).all()
    assert tests[(tests.team_a == "a") & (tests.team_b == "b")].p_value.notna().all()


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("Time", -100, r"'Time' has 1 value\(s\) outside its valid range \[0, inf\], e.g. team 'a' case '1': -100"),
        ("DSC", 7, r"'DSC' has 1 value\(s\) outside its valid range \[0, 1\], e.g. team 'a' case '1': 7"),
        ("NSD", -0.1, r"'NSD' has 1 value\(s\) outside"),
        ("AUC_GPU", -1, r"'AUC_GPU' has 1 value\(s\) outside"),
    ],
)
def test_impossible_values_are_errors(column, value, pattern):
    table = HAND.copy()
    table.loc[0, column] = value
    with pytest.raises(ResultsTableError, match=pattern):
        prepare_results(table, "flare22")


def test_protocol_worst_value_must_lie_in_range(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"extends": "flare22", "ranking": {"metrics": [{"name": "DSC", "higher_is_better": true, '
                    '"worst": -1, "minimum": 0, "maximum": 1}]}}')
    with pytest.raises(ValueError, match="worst -1 lies outside"):
        load_protocol(path)


def independent_methods(table, alpha=0.05):
    """challengeR's ranking methods written out with pandas and scipy, one metric at a time."""
    protocol = load_protocol("flare22")
    teams = sorted(table.team.unique())
    combined = {method: pd.Series(0.0, index=teams) for method in RANKING_METHODS}
    weights = 0.0
    for metric in protocol.ranking_metrics:
        wide = table.pivot(index="case", columns="team", values=metric.name)[teams]
        sign = -1 if metric.higher_is_better else 1
        case_ranks = (sign * wide).rank(axis=1, method="min")
        per_method = {
            "rank_then_aggregate": case_ranks.mean(),
            "aggregate_mean_then_rank": (sign * wide.mean()).rank(method="min"),
            "aggregate_median_then_rank": (sign * wide.median()).rank(method="min"),
        }
        wins = pd.Series(0, index=teams)
        for x in teams:
            for y in teams:
                if x != y:
                    p = r_wilcox_paired_p(wide[x], wide[y], "greater" if metric.higher_is_better else "less")
                    p = 1.0 if np.isnan(p) else p  # R: p = 1 when the two never differ
                    wins[x] += p <= alpha
        per_method["test_then_rank"] = (-wins).rank(method="min")
        for method, ranks in per_method.items():
            combined[method] += metric.weight * ranks
        weights += metric.weight
    return pd.DataFrame({m: (s / weights).rank(method="min").astype(int) for m, s in combined.items()})


def test_ranking_methods_equal_an_independent_computation_with_ties_and_a_constant_metric():
    rng = np.random.default_rng(8)
    rows = []
    for team, shift in zip("pqrstu", (0.0, 0.05, 0.05, 0.1, 0.2, 0.3)):
        for case in range(12):
            dsc = np.round(0.9 - shift + rng.normal(0, 0.03), 2)
            rows.append((team, f"c{case:02d}", dsc, np.round(dsc - 0.05, 1), rng.integers(10, 14), 0.0,
                         rng.integers(1, 4) * 100))
    table = table_from(rows)  # AUC_GPU is constant: every team within the allowance
    methods = ranking_methods(table, "flare22")
    assert list(methods.columns) == ["team", "official", *RANKING_METHODS]
    expected = independent_methods(table).reindex(methods.team)
    for method in RANKING_METHODS:
        assert methods[method].tolist() == expected[method].tolist(), method
    official = rank(table, "flare22").set_index("team")["rank"].reindex(methods.team)
    assert methods.rank_then_aggregate.tolist() == official.tolist()
    assert methods.test_then_rank.nunique() > 1
    agreement = ranking_methods_agreement(methods)
    assert agreement.method.tolist() == list(RANKING_METHODS)
    for method, tau in zip(agreement.method, agreement.kendall_tau):
        assert tau == pytest.approx(stats.kendalltau(methods.rank_then_aggregate, methods[method]).statistic)


def test_holm_hand_worked():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 -> cummax 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm_adjust(np.array([0.5, 0.9])), [1.0, 1.0])


def test_holm_is_applied_per_metric(example_results):
    with pytest.warns(RankingWarning):
        raw = significance(example_results, "flare22", adjust="none")
    holm = significance(example_results, "flare22")  # the same table: warned once
    for metric in METRICS:
        mask = raw.metric == metric
        np.testing.assert_allclose(holm.p_adjusted[mask], holm_adjust(raw.p_value[mask].to_numpy()))


def test_best_versus_rest(example_results):
    with pytest.warns(RankingWarning):
        table = best_versus_rest(example_results, "flare22")
    medians = example_results.groupby("team").DSC.median()
    assert set(table.team_a) == {medians.idxmax()}
    assert len(table) == 11 and table.team_b.nunique() == 11
    np.testing.assert_allclose(table.p_adjusted, holm_adjust(table.p_value.to_numpy()))
    with pytest.raises(ValueError, match="metric must be one of"):
        best_versus_rest(example_results, "flare22", metric="HD95")  # the same table: its warning was given above


def test_each_warning_about_a_table_is_given_once(example_results):
    """rank, bootstrap, significance and ranking methods all prepare the table; its warnings come once."""
    import warnings

    from flare_eval.ranking import ranking_methods, significance

    table = example_results.assign(note="x")  # a fresh table: an ignored column and a team lacking a case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rank(table, "flare22")
        bootstrap_stability(table, "flare22", n_samples=20, seed=1)
        significance(table, "flare22")
        ranking_methods(table, "flare22")
    told = [str(w.message) for w in caught if issubclass(w.category, RankingWarning)]
    assert len(told) == len(set(told)) >= 2
    assert all(w.filename == __file__ for w in caught if issubclass(w.category, RankingWarning))
    assert prepare_results(table, "flare22").warnings == tuple(sorted(set(told), key=told.index))


def test_numeric_team_ids_are_flagged():
    numeric = HAND.assign(team=HAND.team.map({"a": 1, "b": 2, "c": 3}))
    with pytest.warns(RankingWarning, match="leading zeros"):
        prepare_results(numeric, "flare22")


def test_bounded_chunks_change_no_result(example_results, monkeypatch):
    """The ranking code works in chunks of bounded size; with chunks of one row the results are the same."""
    from flare_eval.ranking import arrays as module
    from flare_eval.ranking import ranking_methods, significance

    table = example_results

    def everything():
        return (rank(table, "flare22"), bootstrap_stability(table, "flare22", n_samples=30, seed=3),
                significance(table, "flare22"), ranking_methods(table, "flare22"))

    whole = everything()
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 1)
    chunked = everything()
    pd.testing.assert_frame_equal(whole[0], chunked[0])
    pd.testing.assert_frame_equal(whole[1].samples, chunked[1].samples)
    np.testing.assert_array_equal(whole[1].ranks, chunked[1].ranks)
    pd.testing.assert_frame_equal(whole[2], chunked[2])
    pd.testing.assert_frame_equal(whole[3], chunked[3])


def test_schemes_are_objects_the_protocol_names():
    """aggregate-then-rank with the median and a structured tie-break, hand-worked, through rank and bootstrap."""
    from flare_eval.ranking import AggregateThenRank, RankThenAggregate, TestThenRank, scheme_of

    assert scheme_of("flare22") == RankThenAggregate()
    assert scheme_of("kits23") == AggregateThenRank("mean", "Dice_tumor")
    protocol = load_protocol({"name": "median", "regions": [
        {"name": "organ", "labels": [1], "metrics": [{"kind": "dice", "name": "Dice"}]}],
        "ranking": {"scheme": "aggregate_then_rank", "statistic": "median",
                    "tie_break": {"score_column": "Dice", "region": "organ"},
                    "metrics": [{"name": "Dice", "higher_is_better": True, "worst": 0.0}]}})
    assert scheme_of(protocol) == AggregateThenRank("median", "Dice_organ")
    # Dice over 3 cases: a (.9, .1, .5) median .5 mean .5; b (.6, .6, .0) median .6 mean .4; c (.5, .5, .5)
    values = {"a": (.9, .1, .5), "b": (.6, .6, .0), "c": (.5, .5, .5)}
    tie = {"a": (1, 1, 1), "b": (0, 0, 0), "c": (0, 0, 0)}  # a wins ties with c on the median
    table = pd.DataFrame([{"team": t, "case": str(i), "Dice": v, "Dice_organ": tie[t][i]}
                          for t, vs in values.items() for i, v in enumerate(vs)])
    ranking = rank(table, protocol).set_index("team")
    assert ranking["rank"].to_dict() == {"b": 1, "a": 2, "c": 3}
    assert ranking.loc["b", "Dice_median"] == 0.6 and ranking.loc["a", "tie_break_median"] == 1.0
    boot = bootstrap_stability(table, protocol, draws=np.array([[0, 1, 2], [1, 1, 1]]))
    # The second sample draws case 1 three times: medians a .1, b .6, c .5 -> b, c, a.
    assert boot.ranks.tolist() == [[2, 1, 3], [3, 1, 2]]
    # Test-then-rank as a scheme: with 3 cases no one-sided test reaches 0.05, so everyone ties.
    assert TestThenRank(0.05).final_ranks(prepare_results(table, protocol)).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="statistic must be 'mean' or 'median'"):
        AggregateThenRank("mode")
