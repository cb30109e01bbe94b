"""Typed request bodies of the JSON API (pydantic), and the one-line error a bad one gets.

Strict types (a string is not a number, a float is not an int, `true` is not 1), finite numbers only (`1e400`
and NaN parse as inf/nan and are refused), bounded lengths; unknown fields are ignored so a newer page still works.

>>> TraceRequest.model_validate({"prompt": "Dallas is in", "max_feature_nodes": 64}).max_feature_nodes
64
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from mechscope.attribution.config import BOUNDS, AttributionConfig, field_help
from mechscope.errors import MechscopeError

MAX_PROMPT_CHARS = 20_000  # trace/intervene; the model's context and the memory guard are checked on top
MAX_PROBE_CHARS = 2000  # the probe box allows as much
MAX_PROBE_LIMIT = 200
MAX_NODES = 8192  # the server's own cap on the node budget (the CLI has none): a page's trace must end in minutes
MAX_TARGETS = 10
MAX_GENERATE = 64
MAX_ID = 2**31 - 1  # SQLite and torch index range; larger ids cannot name a feature

Text = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]
ProbeText = Annotated[str, StringConstraints(max_length=MAX_PROBE_CHARS)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
NodeId = Annotated[str, StringConstraints(max_length=200)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=100)]
CLI = AttributionConfig()  # the CLI's defaults: the trace form's and a bare request's


def _range(name: str, high: float | None = None) -> dict:
    """pydantic's bounds for the knob `name`, from AttributionConfig's BOUNDS (`high`: the server's tighter cap)."""
    b = BOUNDS[name]
    hi = b.high if high is None else high
    return {"gt" if b.low_open else "ge": b.low, **({"le": hi} if hi is not None else {})}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", validate_default=True)


class TraceRequest(_Body):
    """A trace from the page; defaults and ranges are AttributionConfig's (the CLI's), the node budget capped."""

    prompt: Text = ""
    chat: bool = False
    max_feature_nodes: int = Field(CLI.max_feature_nodes, **_range("max_feature_nodes", MAX_NODES))
    targets: list[Token] = Field(default_factory=list, max_length=MAX_TARGETS)
    # pruning thresholds; None = the CLI's defaults (AttributionConfig)
    node_threshold: Annotated[float, Field(allow_inf_nan=False, **_range("node_threshold"))] | None = None
    edge_threshold: Annotated[float, Field(allow_inf_nan=False, **_range("edge_threshold"))] | None = None
    logit_diff: Annotated[list[Token], Field(min_length=2, max_length=2)] | None = None  # explain logit(A) − logit(B)
    heads: bool = False  # split every cross-position link into attention heads (slower; docs/attention.md)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty prompt")
        return v

    @model_validator(mode="after")
    def _a_config(self) -> "TraceRequest":
        if self.logit_diff and self.targets:
            raise ValueError("give targets or a logit difference, not both")
        if self.logit_diff and self.logit_diff[0] == self.logit_diff[1]:
            raise ValueError(f"logit_diff: needs two different tokens, got {self.logit_diff[0]!r} twice")
        try:  # the config's own checks have the last word
            self.config()
        except MechscopeError as e:
            raise ValueError(str(e)) from None
        return self

    def config(self) -> AttributionConfig:
        """The AttributionConfig this request asks for (unset thresholds: the CLI's)."""
        from dataclasses import replace

        thr = {k: v for k, v in (("node_threshold", self.node_threshold), ("edge_threshold", self.edge_threshold)) if v}
        # built now, not copied from CLI: its memory limit reads $MECHSCOPE_MAX_MEMORY_GB as `serve` set it
        return replace(
            AttributionConfig(),
            max_feature_nodes=self.max_feature_nodes,
            targets=list(self.targets),
            logit_diff=tuple(self.logit_diff) if self.logit_diff else None,
            heads=self.heads,
            **thr,
        )


def trace_options() -> dict:
    """The trace form's fields as the page builds them: default, range and help of each, from TraceRequest's bounds.

    >>> [f["name"] for f in trace_options()["fields"]]
    ['max_feature_nodes', 'node_threshold', 'edge_threshold', 'targets', 'logit_diff']
    >>> trace_options()["fields"][0]["default"], trace_options()["fields"][0]["max"]
    (2048, 8192)
    """

    def number(name: str, kind: str, high: float | None = None) -> dict:
        b = BOUNDS[name]
        return {"name": name, "type": kind, "default": getattr(CLI, name), "min": b.low, "min_open": b.low_open,
                "max": b.high if high is None else high, "help": field_help(name)}  # fmt: skip

    return {
        "fields": [
            number("max_feature_nodes", "int", MAX_NODES),
            number("node_threshold", "float"),
            number("edge_threshold", "float"),
            {
                "name": "targets",
                "type": "tokens",
                "default": [],
                "max_items": MAX_TARGETS,
                "help": field_help("targets"),
            },
            {"name": "logit_diff", "type": "token_pair", "default": None, "help": field_help("logit_diff")},
        ]
    }


class EditRequest(_Body):
    feature: Annotated[str, StringConstraints(min_length=3, max_length=40, pattern=r"^\d{1,9}/\d{1,9}(@-?\d{1,6})?$")]
    mode: Literal["set", "scale", "ablate"] = "set"
    value: Finite = 0.0


class InterveneRequest(_Body):
    prompt: Text = ""
    edits: list[EditRequest] = Field(min_length=1, max_length=200)
    freeze_attention: bool = True
    generate: int = Field(0, ge=0, le=MAX_GENERATE)
    chat: bool = False
    watch: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=20
    )
    top_k: int = Field(5, ge=1, le=50)
    # vocabulary ids whose centred logit (logit − mean logit) comes back before and after: the page compares
    # their change with what the open graph predicts
    logit_ids: list[Annotated[int, Field(ge=0, le=MAX_ID)]] = Field(default_factory=list, max_length=20)

    _not_empty = field_validator("prompt")(TraceRequest._not_empty.__func__)


class ProbeRequest(_Body):
    text: ProbeText = ""
    token: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    pos: int | None = Field(None, ge=-100_000, le=100_000)
    limit: int = Field(20, ge=1, le=MAX_PROBE_LIMIT)

    @field_validator("text")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty text")
        return v


class QParamsRequest(_Body):
    pinnedIds: list[NodeId] = Field(default_factory=list, max_length=2000)
    supernodes: list[Annotated[list[NodeId], Field(max_length=500)]] = Field(default_factory=list, max_length=200)
    clickedId: NodeId = ""
    # the page's reading filters: nodes hidden one by one, features denser than this share of tokens hidden (1: none)
    hiddenIds: list[NodeId] = Field(default_factory=list, max_length=5000)
    densityThreshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None


GraphName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Position = Annotated[int, Field(ge=-100_000, le=100_000)]


class AttendRequest(_Body):
    """QK attribution of one head on a stored graph's prompt; positions as in the graph (negative: from the end)."""

    graph: GraphName
    layer: int = Field(ge=0, le=MAX_ID)
    head: int = Field(ge=0, le=MAX_ID)
    query: Position | None = None  # default: the last token
    key: Position | None = None  # default: the key the head attends to most after the first token
    top: int = Field(20, ge=1, le=200)


class LabelsRequest(_Body):
    labels: dict[NodeId, Annotated[str, StringConstraints(max_length=300)]] = Field(max_length=5000)


def one_line(exc: ValidationError | list[dict]) -> str:
    """The first validation problem as `field: message`, e.g. `targets: Input should be a valid list`."""
    errors = exc.errors() if isinstance(exc, ValidationError) else list(exc)
    if not errors:
        return "invalid request"
    e = errors[0]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc and e.get("type") in ("model_type", "model_attributes_type", "dict_type"):
        return "the request body must be a JSON object"
    if e.get("type") == "missing" and not loc:
        return "the request body must be a JSON object"
    where = ".".join(loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{where}: {msg}" if where else msg).replace("\n", " ")[:300] + more
