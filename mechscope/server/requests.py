"""Typed request bodies of the JSON API (pydantic), and the one-line error a bad one gets.

Strict types (a string is not a number, a float is not an int, `true` is not 1), finite numbers only (`1e400`
and NaN parse as inf/nan and are refused), bounded lengths; unknown fields are ignored so a newer page still works.

>>> TraceRequest.model_validate({"prompt": "Dallas is in", "max_feature_nodes": 64}).max_feature_nodes
64
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from mechscope.attribution.attribute import PRESETS

MAX_PROMPT_CHARS = 20_000  # trace/intervene; the model's context and the memory guard are checked on top
MAX_PROBE_CHARS = 2000  # the probe box allows as much
MAX_PROBE_LIMIT = 200
MAX_NODES = 8192
MAX_GENERATE = 64
MAX_ID = 2**31 - 1  # SQLite and torch index range; larger ids cannot name a feature

Text = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]
ProbeText = Annotated[str, StringConstraints(max_length=MAX_PROBE_CHARS)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
NodeId = Annotated[str, StringConstraints(max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", validate_default=True)


class TraceRequest(_Body):
    prompt: Text = ""
    chat: bool = False
    max_feature_nodes: int = Field(PRESETS["interactive"].max_feature_nodes, ge=0, le=MAX_NODES)
    targets: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=10
    )
    # pruning thresholds; None = the CLI's defaults (AttributionConfig)
    node_threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    edge_threshold: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] | None = None
    heads: bool = False  # split every cross-position link into attention heads (slower; docs/attention.md)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty prompt")
        return v


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
