"""Progressive expansion (Algorithm 1): pure search logic, its journal and reports, and the real wiring.

- :mod:`~lps_keras.search.algorithm`: the ``Expansion`` object and ``run_expansion`` (pure: takes its latency
  and evaluation functions and its executor)
- :mod:`~lps_keras.search.candidates`: one step's candidates (``find_k``, ``nearest_k``, ``propose_candidates``)
- :mod:`~lps_keras.search.decision`: a step's verdict (``judge``), racing (``race_plan``); its statistics in
  :mod:`~lps_keras.search.stats`
- :mod:`~lps_keras.search.evaluations`: evaluating (arch, context) pairs here or on an executor
- :mod:`~lps_keras.search.executors`: where evaluations run (in process, process pool, Ray)
- :mod:`~lps_keras.search.latencies`: where latencies come from (measured, paired sets, profiles, a Ray device node)
- :mod:`~lps_keras.search.records` / :mod:`~lps_keras.search.journal`: records and the resumable JSON journal
- :mod:`~lps_keras.search.report`: tables, step recipes, plot
- :mod:`~lps_keras.search.replay`: a finished search read back from its journal, each step judged again
- :mod:`~lps_keras.search.expansion`: the search wired to real latency and proxy training

Importing this package does not import TensorFlow or Keras.
"""

from lps_keras.search.algorithm import SEED_STRIDE, Expansion, run_expansion, step_seed
from lps_keras.search.candidates import DIMENSIONS, SearchError, find_k, nearest_k, propose_candidates
from lps_keras.search.decision import (
    VERDICTS,
    Arm,
    DecisionConfig,
    RacingConfig,
    Verdict,
    judge,
    mean_sd_se,
    race_plan,
    racing_rounds,
    student_t_quantile,
)
from lps_keras.search.evaluations import evaluate_candidates
from lps_keras.search.journal import (
    JOURNAL_FORMAT,
    JOURNAL_VERSION,
    Candidate,
    EvalContext,
    Evaluation,
    JournalError,
    SearchJournal,
    Step,
    fingerprint,
)
from lps_keras.search.report import (
    DIMENSION_COLORS,
    TABLE_COLUMNS,
    format_table,
    plot_expansion,
    table4_comparison,
    table_rows,
    write_step_recipes,
    write_table,
)

__all__ = [
    "DIMENSIONS", "SearchError", "evaluate_candidates", "find_k", "nearest_k", "propose_candidates", "run_expansion",
    "Expansion", "SEED_STRIDE", "step_seed", "JOURNAL_FORMAT", "JOURNAL_VERSION", "Candidate", "EvalContext",
    "Evaluation", "JournalError", "SearchJournal", "Step", "fingerprint", "DIMENSION_COLORS", "TABLE_COLUMNS",
    "format_table", "plot_expansion", "table4_comparison", "table_rows", "write_step_recipes", "write_table",
    "VERDICTS", "Arm", "DecisionConfig", "RacingConfig", "Verdict", "judge", "mean_sd_se", "race_plan",
    "racing_rounds", "student_t_quantile",
]
