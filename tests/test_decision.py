"""The step verdict (search/decision.py) on hand-made steps, one per defect of the plain argmax."""

import math

import numpy as np
import pytest

from lps_keras.search.decision import (
    Arm,
    DecisionConfig,
    judge,
    pooled_sd,
    race_plan,
    student_t_quantile,
)
from lps_keras.search.stats import f_quantile, largest_variance_test, welch_df


def _scores(mean, spread=0.002, n=2):
    """n scores with the given mean and sample sd ``spread`` (symmetric around the mean)."""
    if n == 1:
        return (mean,)
    offs = np.linspace(-1, 1, n)
    offs = offs / offs.std(ddof=1)
    return tuple(float(mean + spread * o) for o in offs)


PARENT = Arm("N", _scores(0.300), latency=1.0)


@pytest.mark.parametrize("p, df, expected", [(0.975, 1, 12.7062), (0.975, 3, 3.1824), (0.975, 5, 2.5706),
                                             (0.975, 30, 2.0423), (0.9875, 3, 4.1765), (0.95, 10, 1.8125)])
def test_student_t_quantiles_match_the_table(p, df, expected):
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


def test_pooled_sd_by_hand():
    sd, df, het = pooled_sd([(1.0, 3.0), (2.0, 2.0, 5.0), (7.0,)])
    # variances 2 (df 1) and 3 (df 2): pooled (2 + 6) / 3
    assert df == 3 and sd == pytest.approx(math.sqrt(8 / 3)) and het == pytest.approx(3 / (8 / 3))


@pytest.mark.parametrize("p, df1, df2, expected", [(0.95, 1, 9, 5.1174), (0.99, 2, 10, 7.5594), (0.975, 3, 12, 4.4742),
                                                     (0.99, 2, 8, 8.6491), (0.95, 4, 30, 2.6896)])
def test_f_quantiles_match_the_table(p, df1, df2, expected):
    assert f_quantile(p, df1, df2) == pytest.approx(expected, abs=2e-4)


def test_largest_variance_test_is_cochrans_c_for_equal_sizes():
    """Cochran's table: k = 5 samples of n = 3 at alpha 0.05, C = max s^2 / sum s^2 is significant above 0.6838.
    Four samples of variance 1 and one of variance v: C = v / (v + 4)."""
    def samples(v):
        return [(-math.sqrt(v), 0.0, math.sqrt(v))] + [(-1.0, 0.0, 1.0)] * 4

    for c, doubtful in ((0.70, True), (0.67, False)):
        i, ratio, bound = largest_variance_test(samples(4 * c / (1 - c)), 0.05)
        assert i == 0 and ratio == pytest.approx(4 * c / (1 - c)) and (ratio > bound) == doubtful
    assert bound / (bound + 4) == pytest.approx(0.6838, abs=1e-4)  # the table's C, from the F bound
    assert largest_variance_test([(1.0, 2.0), (3.0,)], 0.05) is None  # one variance: nothing to compare


def test_welch_df_by_hand():
    a, b = 0.03 ** 2 / 3, 0.01 ** 2 / 5  # two means: s^2 / n with df 2 and 4
    assert welch_df([(a, 2), (b, 4)]) == pytest.approx((a + b) ** 2 / (a * a / 2 + b * b / 4))
    assert welch_df([(a, 2), (b, math.inf)]) == pytest.approx((a + b) ** 2 / (a * a / 2))  # a known part


def test_a_noisy_network_is_not_pooled_with_quiet_ones():
    """One candidate's seeds spread 30x the others' (s^2 900x, far above Cochran's bound F(0.99; 2, 8) = 8.65).
    Pooled, its SE would shrink to the pool's and its lead over the quiet runner-up would be "decided"; with
    its own sd and Welch's df it is not."""
    parent = Arm("N", _scores(0.300, 0.001, 3), 1.0)
    noisy = Arm("noisy", _scores(0.350, 0.03, 3), 1.5)  # slope 0.1
    quiet = Arm("quiet", _scores(0.310, 0.001, 3), 1.5)  # slope 0.02
    others = [Arm(f"o{i}", _scores(0.299, 0.001, 3), 1.3) for i in range(2)]
    v = judge(parent, [noisy, quiet, *others])
    assert not v.pooled and "not poolable" in v.reason and "Welch" in v.reason
    # by hand: the same dL, so the parent cancels; each mean's own variance s^2 / 3, over dL^2
    a, b = 0.03 ** 2 / 3 / 0.25, 0.001 ** 2 / 3 / 0.25
    df = (a + b) ** 2 / (a * a / 2 + b * b / 2)
    assert v.margin == pytest.approx(0.08) and v.margin_se == pytest.approx(math.sqrt(a + b))
    assert v.df == math.floor(df) == 2 and v.quantile == pytest.approx(4.3027, abs=1e-3)  # t(0.975, 2)
    assert v.kind == "undecided" and v.margin < v.quantile * v.margin_se
    # what pooling would have said: s_p^2 = (0.03^2 + 4 x 0.001^2) / 5, df 10, t(0.975, 10) = 2.2281
    sp2 = (0.03 ** 2 + 4 * 0.001 ** 2) / 5
    assert v.pooled_sd == pytest.approx(math.sqrt(sp2))
    assert 0.08 > 2.2281 * math.sqrt(2 * sp2 / 3 / 0.25)  # "decided" under the pool
    # quiet networks alike: pooled as before
    assert judge(parent, [quiet, *others]).pooled
    # quiet networks whose seeds agree exactly (s^2 = 0) keep the pooled variance when pooling is refused:
    # with their own 0 a tiny lead of one over another would have SE 0 and be "decided"
    flat = [Arm(f"f{i}", (0.301 + 0.0001 * i,) * 3, 1.5) for i in range(3)]
    v = judge(Arm("N", (0.300,) * 3, 1.0), [Arm("noisy", _scores(0.299, 0.03, 3), 1.5), *flat])
    assert not v.pooled and v.winner is not None and v.winner >= 1  # one of the flat ones
    assert v.margin_se > 0 and v.kind != "decided"


def test_negative_gains_are_no_gain_not_an_argmax():
    """-1 point for +0.5 ms would beat -0.5 points for +0.1 ms under the plain argmax of slopes."""
    a = Arm("costly_loss", _scores(0.290), latency=1.5)
    b = Arm("cheap_loss", _scores(0.295), latency=1.1)
    slopes = [(0.290 - 0.300) / 0.5, (0.295 - 0.300) / 0.1]
    assert int(np.argmax(slopes)) == 0  # the defect of the plain argmax: the bigger loss at the bigger cost wins
    v = judge(PARENT, [a, b])
    assert v.kind == "no gain" and v.chosen is None and "improves" in v.reason
    assert [r.status for r in v.arms[:2]] == ["no gain", "no gain"]


def test_a_candidate_worse_on_both_axes_is_never_chosen():
    good = Arm("good", _scores(0.320), latency=1.4)
    worse = Arm("worse", _scores(0.280), latency=2.0)
    v = judge(PARENT, [worse, good])
    assert v.chosen == 1 and v.arms[0].status == "no gain"


def test_latency_noise_is_not_dominance():
    """A candidate within 2 SE of the parent's latency wins only with a significant gain."""
    noisy = Arm("noisy", _scores(0.302), latency=1.01, latency_se=0.05)  # +0.2 points, dL 0.01 +- 0.05 ms
    regular = Arm("regular", _scores(0.320), latency=1.5, latency_se=0.05)
    v = judge(PARENT, [noisy, regular])
    assert v.arms[0].status == "same latency" and v.chosen == 1
    # under the plain rule the noise flip (dL ~ 0) has slope 0.2 / 0.01 = 20 points per ms and wins
    assert (0.302 - 0.300) / 0.01 > (0.320 - 0.300) / 0.5
    # a large, significant gain at the same latency does dominate
    strong = Arm("strong", _scores(0.340), latency=0.99, latency_se=0.05)
    v2 = judge(PARENT, [strong, regular])
    assert v2.arms[0].status == "dominates" and v2.chosen == 0 and v2.kind == "decided"


def test_pooled_noise_and_student_t_threshold():
    a = Arm("a", _scores(0.330, 0.004), latency=1.5)
    b = Arm("b", _scores(0.310, 0.004), latency=1.5)
    v = judge(PARENT, [a, b], DecisionConfig(alpha=0.05))
    # three networks x 2 seeds: df 3; sds 0.002, 0.004, 0.004 pooled
    assert v.df == 3 and v.quantile == pytest.approx(3.1824, abs=1e-3)
    assert v.pooled_sd == pytest.approx(math.sqrt((0.002 ** 2 + 2 * 0.004 ** 2) / 3))
    # margin by hand: slopes (0.03 - 0.01) / 0.5; SE: own means sd^2/2 each over dL^2 (the parent cancels: same dL)
    sd = v.pooled_sd
    assert v.margin == pytest.approx(0.04)
    assert v.margin_se == pytest.approx(math.sqrt(2 * (sd ** 2 / 2) / 0.25))
    assert v.kind == ("decided" if v.margin > v.quantile * v.margin_se else "undecided")
    # more looks at the same data need more evidence
    v2 = judge(PARENT, [a, b], DecisionConfig(alpha=0.05, looks=2))
    assert v2.quantile == pytest.approx(4.1765, abs=1e-3)


def test_latency_uncertainty_widens_the_margin_by_the_delta_method():
    a = Arm("a", _scores(0.330, 0.004), latency=1.5, latency_se=0.0)
    b = Arm("b", _scores(0.320, 0.004), latency=1.4, latency_se=0.0)
    exact = judge(PARENT, [a, b])
    a2, b2 = Arm("a", a.scores, 1.5, 0.1), Arm("b", b.scores, 1.4, 0.1)
    noisy = judge(PARENT, [a2, b2])
    assert noisy.margin == pytest.approx(exact.margin)
    extra = (0.03 * 0.1 / 0.5 ** 2) ** 2 + (0.02 * 0.1 / 0.4 ** 2) ** 2
    assert noisy.margin_se == pytest.approx(math.sqrt(exact.margin_se ** 2 + extra))


def _slope_diff_ucb(a, b, parent, sd, q):
    """UCB of s_a - s_b by hand (numpy): the slopes' own-mean, shared-parent and latency variances."""
    n_p, p = len(parent.scores), np.mean(parent.scores)
    ga, gb = np.mean(a.scores) - p, np.mean(b.scores) - p
    la, lb = a.latency - parent.latency, b.latency - parent.latency
    var = (sd ** 2 / len(a.scores) / la ** 2 + sd ** 2 / len(b.scores) / lb ** 2
           + sd ** 2 / n_p * (1 / la - 1 / lb) ** 2
           + (ga * a.latency_se / la ** 2) ** 2 + (gb * b.latency_se / lb ** 2) ** 2)
    return ga / la - gb / lb + q * np.sqrt(var)


TWIN_PARENT = Arm("N", _scores(0.300, 0.0005, n=3), latency=1.0)
TWIN_A = Arm("width_s3-5", _scores(0.3100, 0.0005, n=3), latency=1.20, latency_se=0.005)  # slope 0.05
TWIN_B = Arm("width_s4-5", _scores(0.3112, 0.0005, n=3), latency=1.22, latency_se=0.005)  # slope 0.0509


def test_near_twins_are_equivalent_and_the_cheaper_is_taken():
    """Two candidates whose slopes differ by noise, each costing well under epsilon to get wrong."""
    v = judge(TWIN_PARENT, [TWIN_A, TWIN_B], DecisionConfig(epsilon=0.005))
    assert v.kind == "equivalent" and set(v.contenders) == {0, 1}
    assert v.winner == 1 and v.chosen == 0 and "width_s3-5, the cheapest" in v.reason
    # the regret of taking A: UCB(s_B - s_A) at the winner's dL (0.22 ms); 3 networks x 3 seeds: df 6
    q = student_t_quantile(0.975, 6)
    assert v.regret_ucb == pytest.approx(_slope_diff_ucb(TWIN_B, TWIN_A, TWIN_PARENT, 0.0005, q) * 0.22, rel=1e-6)
    assert v.regret_ucb < 0.005
    # with a tight epsilon the same step stays undecided
    assert judge(TWIN_PARENT, [TWIN_A, TWIN_B], DecisionConfig(epsilon=1e-5)).kind == "undecided"


def test_a_contender_dearer_than_the_winner_no_longer_blocks_equivalent():
    """D (1.30 ms, dearer than the winner B at 1.22) is a contender only through its noisy latency (slope
    0.033 +- 0.011). It is never taken, so what matters is whether it could beat the cheap twin A, and it
    hardly can: the bound is max over B and D of UCB(s_j - s_A). The former rule bounded the winner's lead
    over every contender, (s_B - s_D + t SE) dL_B, about 0.0096 here, and kept the step undecided."""
    dear = Arm("res_path2", _scores(0.3100, 0.0005, n=3), latency=1.30, latency_se=0.1)
    v = judge(TWIN_PARENT, [TWIN_A, TWIN_B, dear], DecisionConfig(epsilon=0.005))
    q = student_t_quantile(0.975, 8)  # four networks x 3 seeds
    assert v.winner == 1 and set(v.contenders) == {0, 1, 2}
    old = _slope_diff_ucb(TWIN_B, dear, TWIN_PARENT, 0.0005, q) * 0.22
    assert old == pytest.approx(0.0096, abs=1e-4) and old > 0.005  # what blocked it
    # one bound for the larger of the two contrasts: t at 1 - alpha / (2 x 2) (Bonferroni over them)
    q_both = student_t_quantile(1 - 0.05 / 4, 8)
    new = max(_slope_diff_ucb(j, TWIN_A, TWIN_PARENT, 0.0005, q_both) for j in (TWIN_B, dear)) * 0.22
    assert v.regret_ucb == pytest.approx(new, rel=1e-6) and new < 0.005
    assert v.kind == "equivalent" and v.chosen == 0


def test_one_seed_is_unknown_and_failures_are_left_out():
    one = Arm("N", (0.3,), 1.0)
    v = judge(one, [Arm("a", (0.32,), 1.5), Arm("b", (0.31,), 1.5), Arm("dead", (), 1.2)])
    assert v.kind == "unknown" and v.chosen == 0 and v.arms[2].status == "failed"
    v2 = judge(one, [Arm("dead", (), 1.2)])
    assert v2.kind == "no gain" and "failed" in v2.reason


def test_race_plan_grows_the_contenders_and_the_parent():
    twin_a = Arm("a", _scores(0.320, 0.01), latency=1.5)
    twin_b = Arm("b", _scores(0.319, 0.01), latency=1.5)
    far = Arm("c", _scores(0.301, 0.01), latency=3.0)
    v = judge(Arm("N", _scores(0.3, 0.01), 1.0), [twin_a, twin_b, far], DecisionConfig(epsilon=1e-6))
    assert v.kind == "undecided"
    plan, parent = race_plan(v, seeds=[2, 2, 2], parent_seeds=2, max_seeds=8, budget=10)
    assert set(plan) <= set(v.contenders) and all(n == 4 for n in plan.values()) and parent == 4
    plan, parent = race_plan(v, seeds=[2, 2, 2], parent_seeds=2, max_seeds=8, budget=1)
    assert sum(n - 2 for n in plan.values()) + (parent - 2) == 1
    decided = judge(PARENT, [Arm("a", _scores(0.4), 1.5)])
    assert race_plan(decided, [2], 2, 8, 10) == ({}, 2)


def test_a_lone_gain_within_noise_is_raced_not_decided():
    """The published CamVid step 5: one candidate a hair above the parent (+0.0001, SE 0.02), all others below it,
    was "decided". A lone positive mean is evidence only when it is significant; otherwise it and the parent race."""
    parent = Arm("N", _scores(0.290, 0.02), latency=2.9)
    hair = Arm("hair", _scores(0.2901, 0.02), latency=4.3, latency_se=0.04)
    losers = [Arm(f"l{i}", _scores(0.250 + 0.01 * i, 0.02), latency=4.0, latency_se=0.03) for i in range(3)]
    v = judge(parent, [*losers, hair])
    assert v.kind == "undecided" and v.chosen == 3 and v.contenders == (3,) and "not significant" in v.reason
    # gain SE = pooled sd x sqrt(1/2 + 1/2) = 0.02: 0.0001 is far below t x 0.02
    assert v.arms[3].gain == pytest.approx(0.0001) and v.arms[3].gain_se == pytest.approx(0.02)
    plan, parent_seeds = race_plan(v, seeds=[2, 2, 2, 2], parent_seeds=2, max_seeds=4, budget=6)
    assert plan == {3: 4} and parent_seeds == 4  # the lone contender and the parent grow, nobody else
    clear = judge(parent, [*losers, Arm("clear", _scores(0.390, 0.02), latency=4.3, latency_se=0.04)])
    assert clear.kind == "decided" and clear.chosen == 3 and "significantly" in clear.reason


# --------------------------------------------------------------------------- the ranking (one seed: "unknown")
def one(name, latency, score):
    return Arm(name, (score,), latency)


def test_rank_by_slope_with_one_seed():
    parent = one("N", 10, 9)
    arms = [one("a", 12, 11), one("b", 14, 12), one("c", 11, 10.5)]  # slopes 2/2, 3/4, 1.5/1
    v = judge(parent, arms)
    assert v.kind == "unknown" and v.chosen == 2
    assert [r.slope for r in v.arms[:3]] == [1.0, 0.75, 1.5] and [r.status for r in v.arms[:3]] == ["slope"] * 3
    assert judge(parent, arms[:2]).chosen == 0  # a: slope 1 beats b: 0.75 although b has the higher P


def test_rank_tie_breaks():
    parent = one("N", 10, 9)
    assert judge(parent, [one("a", 11, 10), one("b", 12, 11)]).chosen == 1  # equal slopes: the higher P
    assert judge(parent, [one("a", 12, 11), one("b", 12, 11)]).chosen == 0  # identical: the earlier op
    # Better at no latency cost (dominating): the higher P; equal P: the lower latency, then the earlier op.
    assert judge(parent, [one("a", 10, 11), one("b", 9.5, 11), one("c", 9.5, 11)]).chosen == 1


def test_rank_guard_not_slower():
    parent = one("N", 10, 9)
    arms = [one("slope", 20, 29), one("dom_low", 10, 9.5), one("dom_high", 9, 9.75), one("faster_worse", 8, 9)]
    v = judge(parent, arms)
    assert v.chosen == 2
    assert [r.status for r in v.arms[:4]] == ["slope", "dominates", "dominates", "same latency"]
    assert [r.slope for r in v.arms[:4]] == [2.0, None, None, None]
    assert judge(parent, [arms[0], arms[3]]).chosen == 0
    v = judge(parent, [arms[3], one("same", 10, 9)])
    assert v.kind == "no gain" and v.chosen is None


def test_mean_sd_se_against_numpy():
    from lps_keras.search.decision import mean_sd_se

    x = [0.31, 0.27, 0.35, 0.22]
    mean, sd, se = mean_sd_se(x)
    assert mean == pytest.approx(np.mean(x)) and sd == pytest.approx(np.std(x, ddof=1))
    assert se == pytest.approx(np.std(x, ddof=1) / 2)
    assert mean_sd_se([0.5]) == (0.5, None, None)


def test_racing_rounds_are_fixed_in_advance():
    from lps_keras.search.decision import RacingConfig, racing_rounds

    assert racing_rounds(2, RacingConfig()) == 0  # racing off: one look
    # 2 -> 4 -> 8 seeds is two rounds, plus one for late contenders
    assert racing_rounds(2, RacingConfig(enabled=True, max_seeds=8, eta=2)) == 3
    assert racing_rounds(3, RacingConfig(enabled=True, max_seeds=8, eta=2)) == 3  # 3 -> 6 -> 8
    assert racing_rounds(8, RacingConfig(enabled=True, max_seeds=8)) == 0
