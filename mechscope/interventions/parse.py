"""Feature specs on the command line: `L/F` (every position, including generated tokens) or `L/F@P` (prompt
position P; negative counts from the end). A supernode is a named group, `NAME=L/F@P,L/F@P`, usable wherever a
feature is.

>>> [str(e.ref) for e in parse_edits(["3/17@5=2.5"], [], ["4/2"])]
['3/17@5', '4/2']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from mechscope.errors import MechscopeError
from mechscope.edits import Edit, FeatureRef

_SPEC = re.compile(r"^(\d+)/(\d+)(?:@(-?\d+))?$")


@dataclass
class Supernodes:
    groups: dict[str, list[FeatureRef]] = field(default_factory=dict)

    def add(self, spec: str) -> None:
        name, _, members = spec.partition("=")
        if not name or not members:
            raise MechscopeError(f"supernode {spec!r}: expected NAME=L/F@P,L/F@P")
        self.groups[name.strip()] = [parse_ref(m.strip()) for m in members.split(",") if m.strip()]

    def resolve(self, token: str) -> list[FeatureRef]:
        name, _, pos = token.partition("@")
        if name in self.groups:
            refs = self.groups[name]
            if pos:
                refs = [FeatureRef(r.layer, r.feature, int(pos)) for r in refs]
            return refs
        return [parse_ref(token)]


def parse_ref(spec: str) -> FeatureRef:
    m = _SPEC.match(spec.strip())
    if not m:
        raise MechscopeError(f"bad feature {spec!r}: expected L/F or L/F@P (or a supernode name)")
    return FeatureRef(int(m.group(1)), int(m.group(2)), int(m.group(3)) if m.group(3) is not None else None)


def parse_edits(
    sets: list[str], scales: list[str], ablates: list[str], supernodes: Supernodes | None = None
) -> list[Edit]:
    """Parse CLI-style edit specs (`L/F[@P]=VALUE`, `L/F[@P]` for ablate) into Edits."""
    sn = supernodes or Supernodes()
    edits: list[Edit] = []
    for mode, specs in (("set", sets), ("scale", scales)):
        for spec in specs:
            target, eq, val = spec.rpartition("=")
            if not eq:
                raise MechscopeError(f"--{mode} {spec!r}: expected FEATURE=VALUE")
            try:
                v = float(val)
            except ValueError:
                raise MechscopeError(f"--{mode} {spec!r}: {val!r} is not a number") from None
            if not math.isfinite(v):
                raise MechscopeError(f"--{mode} {spec!r}: value must be finite")
            edits += [Edit(r, mode, v) for r in sn.resolve(target)]
    for spec in ablates:
        edits += [Edit(r, "ablate") for r in sn.resolve(spec)]
    return edits
