"""Regret of a proxy's choice (search/regret.py) on a hand-made step."""

import pytest

from lps_keras.search.decision import DecisionConfig
from lps_keras.search.regret import (
    Scored,
    random_pick_regret,
    regret,
    self_regret,
    slopes,
    subset_regrets,
    summary,
)

# Parent at 1.0 ms; slopes by hand from the means: a (0.41 - 0.31) / 1 = 0.1, b (0.35 - 0.31) / 0.5 = 0.08,
# c (0.30 - 0.31) / 0.2 = -0.05.
PARENT = Scored("N", 1.0, (0.30, 0.32))
CANDS = [Scored("a", 2.0, (0.40, 0.42)), Scored("b", 1.5, (0.33, 0.37)), Scored("c", 1.2, (0.30, 0.30))]
CONFIG = DecisionConfig()  # alpha 0.05, epsilon 0.5 points, one look


def test_slopes_and_regret_by_hand():
    ref = slopes(PARENT, CANDS)
    assert ref == pytest.approx({"a": 0.1, "b": 0.08, "c": -0.05})
    assert regret("a", ref) == 0 and regret("b", ref) == pytest.approx(0.2) and regret("c", ref) == pytest.approx(1.5)
    assert regret(None, ref) == 1.0  # keeping the parent gains nothing
    assert random_pick_regret(ref) == pytest.approx((0 + 0.2 + 1.5) / 3)
    with pytest.raises(ValueError, match="'z' has no reference slope"):
        regret("z", ref)
    with pytest.raises(ValueError, match="some candidate gains"):
        regret(None, {"a": -0.1})


def test_subset_regrets_replay_the_search_verdict():
    ref = {"a": 0.1, "b": 0.08, "c": -0.05}
    one = subset_regrets(PARENT, CANDS, ref, 1, CONFIG)
    # seed 0: a (slope 0.1) beats b (0.06); seed 1: a and b tie at 0.1, the higher mean (a) wins. One seed: unknown.
    assert [(c.seeds, c.verdict, c.chosen, c.regret) for c in one] == [((0,), "unknown", "a", 0.0),
                                                                      ((1,), "unknown", "a", 0.0)]
    # Two seeds: pooled sd sqrt(0.0003), df 4; margin a - b = 0.02 with SE 0.03 (delta method by hand), far
    # below t(0.975, 4) = 2.776 SEs, and its regret bound 0.02 + 2.776 * 0.03 > epsilon: undecided, a kept.
    (two,) = subset_regrets(PARENT, CANDS, ref, 2, CONFIG)
    assert (two.verdict, two.chosen, two.regret) == ("undecided", "a", 0.0)
    s = summary(one + [two])
    assert s["regret_mean"] == 0 and s["regret_worst"] == 0 and s["verdicts"] == {"undecided": 1 / 3,
                                                                                  "unknown": 2 / 3}
    with pytest.raises(ValueError, match="n must be"):
        subset_regrets(PARENT, CANDS, ref, 3, CONFIG)


def test_self_regret_uses_the_other_seeds_as_reference():
    # Seed 0 alone picks a; seed 1 gives a and b the same slope 0.1: regret 0. Seed 1 alone picks a (tie, higher
    # mean); seed 0's slopes make a the best: regret 0.
    assert self_regret(PARENT, CANDS, CONFIG) == [0.0, 0.0]
    b_lucky = [CANDS[0], Scored("b", 1.5, (0.33, 0.40)), CANDS[2]]
    # seed 0 alone picks a (0.1 vs b 0.06); judged by seed 1 (a 0.1, b 0.16): regret (0.16 - 0.1) / 0.16 = 0.375.
    # seed 1 alone picks b (0.16); judged by seed 0 (a 0.1, b 0.06): regret (0.1 - 0.06) / 0.1 = 0.4.
    assert self_regret(PARENT, b_lucky, CONFIG) == pytest.approx([0.375, 0.4])
    # one seed: nothing to judge it by (an empty list, not a division by zero)
    one = [Scored(c.name, c.latency, c.scores[:1]) for c in CANDS]
    assert self_regret(Scored(PARENT.name, PARENT.latency, PARENT.scores[:1]), one, CONFIG) == []
