"""The lens benchmark: a fixed prompt suite and the numbers that judge a dictionary (see DESIGN.md).

>>> from mechscope.lens import LensConfig, evaluate_lens, load_suite      # doctest: +SKIP
>>> res = evaluate_lens(m, ts, index, load_suite(), LensConfig(subset="quick"))
>>> res["overall"]["swap_success"]

Names load on first use (PEP 562): the config and the suite import without torch.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"mechscope.lens.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mechscope.lens' has no attribute {name!r}")


__all__ = list(_WHERE)
