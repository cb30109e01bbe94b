"""Attribution graphs: local replacement model, attribute(), graph type, pruning, scores, JSON schema."""

from mechscope.attribution.attribute import AttributionConfig, attribute
from mechscope.attribution.graph import Graph, graph_store, validate_graph_json
from mechscope.attribution.supernodes import Arrow, Box, Flowchart, flowchart, suggest_groups

__all__ = [
    "AttributionConfig",
    "attribute",
    "Graph",
    "graph_store",
    "validate_graph_json",
    "Arrow",
    "Box",
    "Flowchart",
    "flowchart",
    "suggest_groups",
]
