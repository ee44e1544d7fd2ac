"""A finished expansion read back from its journal: its recorded steps for the reports, and each step judged
again by the current rules. Pure, no TensorFlow; used by ``expand.py --from-journal``.

Nothing is measured or trained. The steps are the journal's records (what the run decided, which the tables
report); a field the journal predates and that is a plain function of the recorded scores (``heterogeneity``,
the pooled sd) is filled in from them. :func:`rejudge` applies today's :func:`~lps_keras.search.decision.judge`
to a step's *final* scores (after the racing it had): it says whether the current rules would call that
evidence differently, not what a new run would do (it could stop racing earlier, take another k or another
parent at a later step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lps_keras.search.decision import Arm, DecisionConfig, Verdict, judge
from lps_keras.search.records import Step
from lps_keras.search.stats import pooled_sd


def recorded_steps(journal) -> list[Step]:
    """Every step the journal recorded (step 0 = the start), with missing pooled-noise fields filled in."""
    out = []
    for i in range(len(journal.steps)):
        step = journal.recorded_step(i)
        if step.index > 0 and (step.pooled_sd is None or step.heterogeneity is None):
            sd, _, het = pooled_sd([step.parent_scores, *[c.scores for c in step.candidates if c.scores]])
            step = dataclasses.replace(step, pooled_sd=step.pooled_sd if step.pooled_sd is not None else sd,
                                       heterogeneity=step.heterogeneity if step.heterogeneity is not None else het)
        out.append(step)
    return out


def rejudge(step: Step, config: DecisionConfig) -> Verdict:
    """Today's verdict on a recorded step's final scores and paired latencies (its parent included)."""
    parent = Arm("parent", tuple(step.parent_scores), step.parent_latency)
    return judge(parent, [Arm(c.op, tuple(c.scores), c.latency, c.latency_se) for c in step.candidates], config)


def replay_lines(steps: Sequence[Step], config: DecisionConfig) -> list[str]:
    """One line per step 1.. : the recorded verdict and choice, and today's on the same final scores."""
    lines = []
    for s in steps[1:]:
        v = rejudge(s, config)
        now = None if v.chosen is None else s.candidates[v.chosen].op
        same = v.kind == s.verdict and now == s.op
        lines.append(f"step {s.index}: recorded {s.verdict} {s.op or '(parent kept)'}; by the current rules "
                     f"{v.kind} {now or '(parent kept)'}{'' if same else ' (CHANGED)'}: {v.reason}")
    return lines
