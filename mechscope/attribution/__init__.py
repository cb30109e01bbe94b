"""Attribution graphs: local replacement model, attribute(), graph type, pruning, scores, JSON schema.

Names load on first use (PEP 562): `from mechscope.attribution.config import AttributionConfig` stays free of
torch, so the CLI can build its options and refuse bad ones before any heavy import.
"""

import sys
import types
from mechscope.lazy import lazy_exports

_WHERE = {
    "AttributionConfig": "config",
    "PRESETS": "config",
    "attribute": "attribute",
    "Graph": "graph",
    "graph_store": "graph",
    "validate_graph_json": "graph",
    "Arrow": "supernodes",
    "Box": "supernodes",
    "Flowchart": "supernodes",
    "flowchart": "supernodes",
    "suggest_groups": "supernodes",
}


__getattr__ = lazy_exports(__name__, _WHERE)


class _Package(types.ModuleType):
    # The import system binds a loaded submodule onto its package: `mechscope.attribution.attribute` (the
    # module) would then hide `attribute` (the function), and `flowchart.py` the `flowchart` function of
    # `supernodes`, once anything imports those submodules. Keep the exported names.
    def __setattr__(self, name: str, value: object) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):  # no exported name is meant to be a module
            source = sys.modules.get(f"mechscope.attribution.{_WHERE[name]}")
            if source is None or not hasattr(source, name):
                return  # its module is still loading: __getattr__ resolves the name on first use
            value = getattr(source, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
__all__ = list(_WHERE)
