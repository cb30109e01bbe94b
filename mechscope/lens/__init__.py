"""The lens benchmark: a fixed prompt suite and the numbers that judge a dictionary (see DESIGN.md).

>>> from mechscope.lens import LensConfig, evaluate_lens, load_suite      # doctest: +SKIP
>>> res = evaluate_lens(m, ts, index, load_suite(), LensConfig(subset="quick"))
>>> res["overall"]["swap_success"]
"""

from mechscope.lens.evaluate import TARGETS, LensConfig, evaluate_lens
from mechscope.lens.metrics import (
    circuit_tracer_scores,
    is_specific_label,
    top_logit_split,
)
from mechscope.lens.suite import (
    CATEGORIES,
    LensPrompt,
    Suite,
    SwapPair,
    load_suite,
    parse_suite,
)

__all__ = [
    "CATEGORIES",
    "TARGETS",
    "LensConfig",
    "LensPrompt",
    "Suite",
    "SwapPair",
    "circuit_tracer_scores",
    "evaluate_lens",
    "is_specific_label",
    "load_suite",
    "parse_suite",
    "top_logit_split",
]
