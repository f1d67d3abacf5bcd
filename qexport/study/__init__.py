"""The mixed-precision study (seed 000): evaluation, sensitivity, greedy and budget search.

``data`` labels the loaded images (:class:`Study`); ``engine`` evaluates configurations sharing
their prefixes; ``strategies`` searches (greedy, budget); ``results`` holds the frozen results and
their JSON/CSV; ``report`` runs each command and writes its files (``chart`` draws the PNG).
The study never loads a model itself: the CLI hands ``api.load`` to the ``run_*`` functions.
"""

from qexport.study.data import PSEUDO_LABEL_BITS, Study, prepare, pseudo_labels
from qexport.study.engine import DEFAULT_CACHE_MB, Progress, conv_infos, evaluate, sensitivity
from qexport.study.report import Written, run_eval, run_search, run_sensitivity
from qexport.study.results import (
    STRATEGIES,
    BudgetOutcome,
    ConvInfo,
    EvalResult,
    SearchResult,
    SearchStep,
    Sensitivity,
    SensitivityRow,
    Strategy,
    bits_config,
    saved_bits,
    sensitivity_csv,
    summary,
)
from qexport.study.strategies import knapsack, search

__all__ = [
    "DEFAULT_CACHE_MB",
    "PSEUDO_LABEL_BITS",
    "STRATEGIES",
    "BudgetOutcome",
    "ConvInfo",
    "EvalResult",
    "Progress",
    "SearchResult",
    "SearchStep",
    "Sensitivity",
    "SensitivityRow",
    "Strategy",
    "Study",
    "Written",
    "bits_config",
    "conv_infos",
    "evaluate",
    "knapsack",
    "prepare",
    "pseudo_labels",
    "run_eval",
    "run_search",
    "run_sensitivity",
    "saved_bits",
    "search",
    "sensitivity",
    "sensitivity_csv",
    "summary",
]
