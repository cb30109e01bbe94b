"""The lens benchmark: a fixed prompt suite and the numbers that judge a dictionary (see DESIGN.md).

>>> from mechscope.lens import LensConfig, evaluate_lens, load_suite
>>> res = evaluate_lens(m, ts, index, load_suite(), LensConfig(subset="quick"))   # the real model   # doctest: +SKIP
>>> res["overall"]["swap_success"]                                                                # doctest: +SKIP

Names load on first use (PEP 562): the config and the suite import without torch.
"""

from mechscope.lazy import lazy_exports

_WHERE = {
    "CATEGORIES": "suite",
    "TARGETS": "evaluate",
    "LensConfig": "config",
    "LensPrompt": "suite",
    "Suite": "suite",
    "SwapPair": "suite",
    "circuit_tracer_scores": "metrics",
    "evaluate_lens": "evaluate",
    "is_specific_label": "metrics",
    "load_suite": "suite",
    "parse_suite": "suite",
    "top_logit_split": "metrics",
}


__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = list(_WHERE)
