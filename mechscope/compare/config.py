"""Options of a graph diff: a documented, self-validating dataclass (the CLI's `diff` and the page's compare view).

>>> DiffConfig(by="label").by
'label'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mechscope.configs import param, require


@dataclass(kw_only=True)
class DiffConfig:
    """How two graphs are aligned and how much of the difference is shown."""

    by: Literal["auto", "id", "label"] = param(
        "auto",
        help="align features by id (L/F), by supernode label, or auto: by id when both graphs come from the same "
        "transcoder set, else by label",
    )
    positions: bool = param(
        False, help="tell apart the same feature at different positions (counted from the prompt's end)"
    )
    top: int = param(20, help="rows shown per section (text output)")
    min_change: float = param(0.001, help="ignore influence changes smaller than this")
    max_edges: int = param(1000, help="edges listed per kind of change, most changed first (all are counted)")

    def __post_init__(self) -> None:
        require(self.top >= 1, f"--top must be at least 1, got {self.top}")
        require(self.min_change >= 0, f"--min-change must be ≥ 0, got {self.min_change}")
        require(self.max_edges >= 1, f"--max-edges must be at least 1, got {self.max_edges}")
