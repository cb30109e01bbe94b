"""CLI: trace-many (a dataset of prompts into a store), diff (two graphs), aggregate (what recurs in a store)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from mechscope.attribution.config import AttributionConfig
from mechscope.cli._common import JsonOut, ModelOpt, TranscodersOpt, command
from mechscope.configs import param
from mechscope.compare.config import DiffConfig
from mechscope.many.config import AggregateConfig, ManyConfig


@dataclass(kw_only=True)
class TraceManyArgs(ModelOpt, TranscodersOpt, JsonOut):
    file: str = param(positional=True, help="prompts: .txt (one per line), .jsonl or .csv (id, targets, group, expect)")
    store: str = param(
        metavar="DIR", help="the store directory: graphs/<id>.json and catalogue.sqlite (made if missing)"
    )
    many: ManyConfig = field(default_factory=ManyConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)


@command(
    "trace-many",
    help="trace every prompt of a file into a store (resumable; local processes or a Ray cluster)",
    description="Trace every prompt of FILE into the store DIR: graphs/<id>.json plus a SQLite catalogue.\n"
    "Run it again to continue an interrupted run: prompts already done are skipped.",
)
def cmd_trace_many(a: TraceManyArgs) -> int:
    from mechscope.many.run import trace_many

    s = trace_many(a.file, a.store, a.model, a.transcoders, a.attribution, a.many, threads=a.threads)
    if a.json:
        print(json.dumps(asdict(s), ensure_ascii=False))
        return 1 if s.error else 0
    c = s.counts
    print(
        f"{s.traced} traced this run ({s.done} done, {s.error} failed) in {s.wall_s:.1f} s on {s.backend} "
        f"({s.workers} worker{'s' * (s.workers != 1)}, {s.threads} threads); {len(s.malformed)} malformed lines"
    )
    print(f"store {s.store}: {c.get('done', 0)} done, {c.get('error', 0)} failed, {c.get('pending', 0)} pending")
    if c.get("error"):
        print(
            f"failed prompts: sqlite3 {s.store}/catalogue.sqlite \"SELECT id, error FROM prompts WHERE status='error'\""
        )
    return 1 if s.error else 0


@dataclass(kw_only=True)
class DiffArgs(JsonOut):
    a: str = param(positional=True, metavar="A", help="the first graph JSON (from trace or trace-many)")
    b: str = param(positional=True, metavar="B", help="the second graph JSON")
    diff: DiffConfig = field(default_factory=DiffConfig)


@command(
    "diff",
    help="what changes between two graphs: features, supernodes and edges, ranked by influence",
    description="Align two graphs by feature id (same transcoder set) or by supernode label (different sets) and\n"
    "list the features, supernodes and edges that appear, disappear or change (B − A), by influence.",
)
def cmd_diff(a: DiffArgs) -> int:
    from mechscope.compare.diff import diff_graphs
    from mechscope.compare.keys import load_graph
    from mechscope.many.render import diff_text

    d = diff_graphs(load_graph(a.a), load_graph(a.b), a.diff)
    print(json.dumps(d, ensure_ascii=False) if a.json else diff_text(d, a.diff.top))
    return 0


@dataclass(kw_only=True)
class AggregateArgs(JsonOut):
    store: str = param(positional=True, metavar="DIR", help="a store made by trace-many")
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)


@command(
    "aggregate",
    help="features, supernodes and edges that recur across a store's graphs; a consensus flowchart; contrasts",
    description="Stream every traced graph of a store (or of one --group) and report what recurs, how often and\n"
    "with how much influence, with a consensus flowchart; --contrast G1 G2 compares two groups.",
)
def cmd_aggregate(a: AggregateArgs) -> int:
    from mechscope.many.aggregate import aggregate_store
    from mechscope.many.render import aggregate_text
    from mechscope.paths import atomic_write_text, check_writable

    if a.aggregate.flowchart:
        check_writable(a.aggregate.flowchart)
    agg = aggregate_store(a.store, a.aggregate)
    fc = agg.pop("_flowchart", None)
    if a.aggregate.flowchart:
        from pathlib import Path

        if fc is None:
            from mechscope.errors import MechscopeError

            raise MechscopeError("no feature recurs often enough for a flowchart; lower --min-frequency")
        atomic_write_text(Path(a.aggregate.flowchart), fc.to_svg())
    if a.json:
        from mechscope.provenance import stamp

        stamp(agg)  # the store's identity (model, set) is in agg["store"]; this adds commit, versions, machine
    print(json.dumps(agg, ensure_ascii=False) if a.json else aggregate_text(agg, a.aggregate.top))
    return 0
