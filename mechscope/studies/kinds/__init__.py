"""The experiment kinds of a case study. Each kind is one options dataclass (the YAML keys it takes, typed, with
their defaults) and one function, registered together with `@experiment(KIND, role)`; nothing else lists them.

measure.py: what the model does and what its graph shows (trace, compare — preconditions by default; overlap,
operand_grid — evidence). intervene.py and steer.py: interventions that test a mechanism (swap, locate, steer —
evidence), run beside controls of the same size; where.py locates a failed one (features, or outside them).
Each function returns numbers, optional figures and `passed` (True / False / None = not testable here).

>>> import mechscope.studies.kinds                       # registers every kind
>>> from mechscope.studies.registry import KINDS
>>> KINDS["swap"].role, KINDS["trace"].role
('evidence', 'precondition')
"""

from mechscope.studies.kinds import intervene, measure, steer  # noqa: F401  (registers the kinds)
