"""Supernodes from a graph JSON: grouping suggestions and automatic flowcharts of labelled supernodes.

The work is split by job: `clustering` (similarity, complete linkage, suggestions), `flowchart` (boxes and
arrows), `flowchart_svg` (drawing). This module keeps the old import path.

>>> from mechscope.attribution.supernodes import flowchart, suggest_groups
"""

from mechscope.attribution.clustering import (
    NON_FEATURE,
    complete_linkage,
    has_bos,
    influence_shares,
    is_feature,
    suggest_groups,
)
from mechscope.attribution.flowchart import Arrow, Box, Flowchart, flowchart
from mechscope.attribution.flowchart_svg import render_svg

__all__ = [
    "NON_FEATURE",
    "Arrow",
    "Box",
    "Flowchart",
    "complete_linkage",
    "flowchart",
    "has_bos",
    "influence_shares",
    "is_feature",
    "render_svg",
    "suggest_groups",
]
