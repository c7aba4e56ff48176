"""Cohort and subgroup statistics, paired comparisons and review lists, checked against scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flare_eval.cli import main
from flare_eval.cohort_stats import (
    MISSING_GROUP,
    CohortWarning,
    attach_metadata,
    bin_numeric,
    case_means,
    compare_teams,
    review_cases,
    subgroup_table,
)


def long_scores(values: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    """(team, case) -> DSC of organs 1, 2, ...; NSD = DSC - 0.01."""
    rows = []
    for (team, case), dscs in values.items():
        for label, dsc in enumerate(dscs, start=1):
            rows.append({"team": team, "case": case, "label": label, "organ": f"o{label}", "DSC": dsc,
                         "NSD": dsc - 0.01})
    return pd.DataFrame(rows)


@pytest.fixture
def example_scores(examples):
    return pd.read_csv(examples.cohort_scores, dtype={"case": str})


def test_bins_are_right_closed_with_readable_labels():
    ages = pd.Series([18, 50, 50.5, 51, 70, 71, np.nan])
    assert bin_numeric(ages, (50, 70)).tolist() == ["<=50", "<=50", "51-70", "51-70", "51-70", ">70", MISSING_GROUP]
    assert bin_numeric(pd.Series([1.5, 2.5]), (2.0,)).tolist() == ["<=2", ">2"]
    with pytest.raises(ValueError, match="increasing"):
        bin_numeric(ages, (70, 50))


def test_metadata_mismatches_are_reported_not_dropped():
    per_case = pd.DataFrame({"team": "t", "case": ["a", "b", "c"], "DSC": [0.9, 0.8, 0.7], "NSD": 0.5})
    metadata = pd.DataFrame({"case": ["a", "b", "z"], "sex": ["F", None, "M"], "age": [40, 60, 80]})
    with pytest.warns(CohortWarning) as record:
        joined = attach_metadata(per_case, metadata, bins={"age": (50, 70)})
    messages = " ".join(str(w.message) for w in record)
    assert "1 metadata case(s) have no scores: z" in messages
    assert "1 scored case(s) have no metadata, grouped as (missing): c" in messages
    assert "metadata column 'sex' is empty for 1 case(s)" in messages
    assert len(joined) == 3
    assert joined.set_index("case").loc["c", "sex"] == MISSING_GROUP
    assert joined.set_index("case")["age"].tolist() == ["<=50", "51-70", MISSING_GROUP]
    with pytest.raises(ValueError, match="more than once"):
        attach_metadata(per_case, pd.concat([metadata, metadata]))
    with pytest.raises(ValueError, match="needs a 'case' column"):
        attach_metadata(per_case, metadata.rename(columns={"case": "id"}))


def test_subgroup_statistics_against_scipy(example_scores, examples):
    metadata = pd.read_csv(examples.metadata)
    with pytest.warns(CohortWarning):
        joined = attach_metadata(case_means(example_scores), metadata, bins={"age": (50, 70)})
        table = subgroup_table(joined, "cohort")
    team = joined[joined.team == "teamB"]
    groups = [team[team.cohort == g].DSC for g in ("asia", "europe", "internal", "north-america")]
    row = table[(table.team == "teamB") & (table.group == "asia")].iloc[0]
    assert row.n == len(groups[0]) and row.DSC_median == pytest.approx(groups[0].median())
    assert row.DSC_q1 == pytest.approx(np.quantile(groups[0], 0.25))
    assert row.DSC_test == "kruskal-wallis"
    assert row.DSC_p == pytest.approx(stats.kruskal(*groups).pvalue)  # the (missing) group takes no part
    with pytest.warns(CohortWarning):
        by_sex = subgroup_table(joined, "sex")
    sex = by_sex[(by_sex.team == "teamB") & (by_sex.group == "F")].iloc[0]
    expected = stats.mannwhitneyu(team[team.sex == "F"].NSD, team[team.sex == "M"].NSD, alternative="two-sided")
    assert sex.NSD_test == "mann-whitney" and sex.NSD_p == pytest.approx(expected.pvalue)


def test_small_subgroups_warn():
    per_case = pd.DataFrame({"team": "t", "case": list("abcdefg"), "DSC": np.linspace(0.5, 0.9, 7), "NSD": 0.5,
                             "scanner": ["GE"] * 5 + ["Canon"] * 2})
    with pytest.warns(CohortWarning, match="subgroup scanner=Canon has only 2 case"):
        table = subgroup_table(per_case, "scanner")
    assert table.set_index("group").loc["Canon", "small_group"]
    assert not table.set_index("group").loc["GE", "small_group"]


def test_compare_against_scipy_on_shared_cases():
    rng = np.random.default_rng(1)
    values = {}
    for case in range(15):
        base = rng.uniform(0.6, 0.9, 3)
        values[("new", f"c{case}")] = list(base + rng.normal(0.03, 0.02, 3))
        values[("old", f"c{case}")] = list(base)
    del values[("new", "c14")]  # only shared cases count
    scores = long_scores(values)
    result = compare_teams(scores, "new", "old", n_samples=3000, seed=5)
    overall = result.summary.set_index("organ").loc["mean"]
    new = scores[(scores.team == "new")].groupby("case").DSC.mean()
    old = scores[(scores.team == "old") & scores.case.isin(new.index)].groupby("case").DSC.mean()
    assert overall.n_cases == 14
    assert overall.mean_difference == pytest.approx((new - old).mean())
    assert overall.t_p == pytest.approx(stats.ttest_rel(new, old).pvalue)
    assert overall.wilcoxon_p == pytest.approx(stats.wilcoxon(new - old).pvalue)
    assert overall.ci_low < overall.mean_difference < overall.ci_high
    organ = result.summary.set_index("organ").loc["o2"]
    a = scores[(scores.team == "new") & (scores.label == 2)].set_index("case").DSC
    b = scores[(scores.team == "old") & (scores.label == 2)].set_index("case").DSC.loc[a.index]
    assert organ.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    again = compare_teams(scores, "new", "old", n_samples=3000, seed=5)
    pd.testing.assert_frame_equal(result.summary, again.summary)
    with pytest.raises(ValueError, match="team 'nope' is not in the scores"):
        compare_teams(scores, "new", "nope")


def test_review_list_threshold_reference_and_order():
    scores = long_scores({
        ("a", "c1"): [0.95, 0.75, 0.40], ("b", "c1"): [0.96, 0.80, 0.50], ("c", "c1"): [0.94, 0.70, 0.60],
        ("a", "c2"): [0.90, 0.90, 0.90], ("b", "c2"): [0.30, 0.90, 0.90], ("c", "c2"): [0.90, 0.90, 0.90],
    })
    median = review_cases(scores)
    assert list(zip(median.case, median.label)) == [("c1", 3), ("c1", 2)]  # c2's organ 1: median 0.9
    assert median.DSC.tolist() == [0.5, 0.75]  # at the threshold counts; worst first
    assert median.teams_at_or_below.tolist() == [3, 2] and set(median.reviewed) == {""}
    by_b = review_cases(scores, reference="b")
    assert list(zip(by_b.case, by_b.label)) == [("c2", 1), ("c1", 3)]
    assert review_cases(scores, threshold=0.2).empty


def test_review_median_leaves_out_penalty_zeros():
    """Two dead teams' zeros must not drag the all-teams median below the threshold."""
    scores = long_scores({
        ("a", "c1"): [0.95, 0.90, 0.60], ("b", "c1"): [0.93, 0.88, 0.70],
        ("dead1", "c1"): [0.0, 0.0, 0.0], ("dead2", "c1"): [0.0, 0.0, 0.0],
    })
    with_zeros = review_cases(scores)  # no status column: every value counts, zeros included
    assert len(with_zeros) == 3 and with_zeros.DSC.max() == pytest.approx(0.465)
    scores["status"] = np.where(scores["team"].str.startswith("dead"), "missing", "ok")
    review = review_cases(scores)
    assert list(zip(review.case, review.label)) == [("c1", 3)] and review.DSC.tolist() == [pytest.approx(0.65)]
    assert set(review.reference) == {"median of all teams (6 unscored values left out)"}
    assert review.teams_at_or_below.tolist() == [2]  # the dead teams' zeros are not counted either


def test_compare_defaults_to_the_fixed_seed_of_rank(examples, tmp_path):
    scores = str(examples.cohort_scores)
    for out in ("p1", "p2"):
        assert main(["compare", scores, "teamA", "teamA-nounlabeled", "--out", str(tmp_path / out)]) == 0
    first, second = (pd.read_csv(tmp_path / out / "comparison.csv") for out in ("p1", "p2"))
    pd.testing.assert_frame_equal(first, second)
    assert set(first.seed) == {2022}


def test_cohort_commands_on_the_examples(examples, tmp_path, capsys):
    scores = str(examples.cohort_scores)
    assert main(["cohorts", scores, "--metadata", str(examples.metadata), "--out", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert "kruskal-wallis" in out and "have no scores: FLARE22_Ts_0099" in err
    subgroups = pd.read_csv(tmp_path / "c" / "subgroups.csv")
    assert set(subgroups.column) == {"cohort", "sex", "age", "manufacturer"}
    assert {"<=50", "51-70", ">70"} <= set(subgroups[subgroups.column == "age"].group)
    organ = pd.read_csv(tmp_path / "c" / "organ_subgroups.csv")
    assert organ.organ.nunique() == 13
    assert main(["compare", scores, "teamA", "teamA-nounlabeled", "--out", str(tmp_path / "p"), "--seed", "1"]) == 0
    comparison = pd.read_csv(tmp_path / "p" / "comparison.csv")
    overall = comparison[comparison.organ == "mean"].iloc[0]
    assert overall.mean_difference > 0 and overall.wilcoxon_p < 0.05 and overall.seed == 1
    assert main(["review", scores, "--out", str(tmp_path / "r.csv")]) == 0
    review = pd.read_csv(tmp_path / "r.csv")
    assert (review.DSC <= 0.75).all() and review.DSC.is_monotonic_increasing


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["compare", "{scores}", "teamA", "teamZ", "--out", "{tmp}"], "team 'teamZ' is not in the scores"),
        (["cohorts", "{scores}", "--metadata", "{meta}", "--out", "{tmp}", "--bins", "age"], "--bins must be"),
        (["cohorts", "{scores}", "--metadata", "{meta}", "--out", "{tmp}", "--columns", "race"], "no column(s)"),
        (["review", "{scores}", "--out", "{tmp}/r.csv", "--threshold", "2"], "--threshold must be between"),
        (["review", "{results}", "--out", "{tmp}/r.csv"], "these columns have none"),
    ],
)
def test_cohort_command_errors(examples, tmp_path, capsys, argv, pattern):
    values = {"scores": str(examples.cohort_scores), "meta": str(examples.metadata), "tmp": str(tmp_path),
              "results": str(examples.results)}
    assert main([a.format(**values) for a in argv]) == 2
    assert pattern in capsys.readouterr().err
