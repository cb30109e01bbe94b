"""Interventions: steer / ablate (steer.py), swap a concept (swap.py), locate it (locate.py), controls of the
same size (controls.py), feature specs (parse.py). The edit mechanics live in `mechscope.edits`, graph validation in
`mechscope.attribution.validate`; both are re-exported here, so `from mechscope.interventions import ...` keeps
working.

>>> from mechscope.interventions import intervene, parse_edits
>>> res = intervene(model, ts, "Dallas is in the state of", parse_edits([], [], ["12/345@5"]))   # doctest: +SKIP
"""

from mechscope.attribution.validate import spearman, total_effects, validate_graph
from mechscope.interventions.controls import random_like, random_swap, self_swap
from mechscope.interventions.locate import LOCATE_COMPONENTS, locate_concept, locate_distributions, locate_logits
from mechscope.interventions.parse import Supernodes, parse_edits, parse_ref
from mechscope.interventions.steer import intervene
from mechscope.interventions.swap import SwapPlan, aligned_pairs, aligned_positions, plan_swap, run_plan, swap
from mechscope.edits import (
    Edit,
    FeatureRef,
    active_features,
    check_edits,
    features_at,
    mlp_inputs,
    run_with_edits,
)

__all__ = [
    "Edit",
    "FeatureRef",
    "Supernodes",
    "SwapPlan",
    "LOCATE_COMPONENTS",
    "active_features",
    "aligned_pairs",
    "aligned_positions",
    "check_edits",
    "features_at",
    "intervene",
    "locate_concept",
    "locate_distributions",
    "locate_logits",
    "mlp_inputs",
    "parse_edits",
    "parse_ref",
    "plan_swap",
    "random_like",
    "random_swap",
    "run_plan",
    "run_with_edits",
    "self_swap",
    "spearman",
    "swap",
    "total_effects",
    "validate_graph",
]
