"""Progressive expansion (Algorithm 1): pure search logic, its journal and reports, and the real wiring.

- :mod:`~lps_keras.search.algorithm`: ``run_expansion`` (pure: takes ``latency_fn`` and ``evaluate_fn``)
- :mod:`~lps_keras.search.candidates`: one step's candidates (``find_k``, ``propose_candidates``) and the choice
  (``select_candidate``)
- :mod:`~lps_keras.search.executors`: where evaluations run (in process, process pool, Ray)
- :mod:`~lps_keras.search.journal`: records and the resumable JSON journal
- :mod:`~lps_keras.search.racing`: seeds' standard errors, the winner's margin, successive-halving racing
- :mod:`~lps_keras.search.report`: tables, step recipes, plot
- :mod:`~lps_keras.search.expansion`: the search wired to real latency and proxy training

Importing this package does not import TensorFlow or Keras.
"""

from lps_keras.search.algorithm import evaluate_candidates, run_expansion
from lps_keras.search.candidates import DIMENSIONS, SearchError, find_k, propose_candidates, select_candidate
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
from lps_keras.search.racing import Decision, RacingConfig, contenders, decide, mean_sd_se, racing_round
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
    "DIMENSIONS", "SearchError", "evaluate_candidates", "find_k", "propose_candidates", "run_expansion",
    "select_candidate", "JOURNAL_FORMAT", "JOURNAL_VERSION", "Candidate", "EvalContext", "Evaluation",
    "JournalError", "SearchJournal", "Step", "fingerprint", "DIMENSION_COLORS", "TABLE_COLUMNS", "format_table",
    "plot_expansion", "table4_comparison", "table_rows", "write_step_recipes", "write_table", "Decision",
    "RacingConfig", "contenders", "decide", "mean_sd_se", "racing_round",
]
