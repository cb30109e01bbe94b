"""The Microscope: the library Session behind the web API, plus the graph store the page lists and saves into."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Callable

from mechscope.attribution.config import AttributionConfig
from mechscope.attribution.graph import input_completeness
from mechscope.errors import MechscopeError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class NotFound(MechscopeError):
    """Something the request names (a graph) does not exist: the server answers 404."""


class Microscope:
    """Model, transcoders, feature index and graph store behind the API."""

    def __init__(
        self,
        model_name: str,
        graph_dir: Path,
        transcoders: str | None = None,
        index: str | None = None,
        progress: Callable[[str], None] = lambda msg: None,
    ) -> None:
        from mechscope.session import Session

        # one Session holds model, set and index (the same loading as the CLI); loaded now, not on the first request,
        # each step announced so the page can say what the server is doing
        self.session = Session(model_name, transcoders, index=index)
        progress(f"loading model {model_name} (the first run converts it, which can take minutes)")
        self.model = self.session.model
        progress("loading transcoders")
        self.ts = self.session.transcoders
        self.graph_dir = graph_dir
        graph_dir.mkdir(parents=True, exist_ok=True)
        progress("opening the feature index")
        self.index = self.session.index
        self.labels = self.session.labels()

    def graph_path(self, name: str) -> Path:
        if not NAME_RE.match(name) or ".." in name:
            raise MechscopeError(f"bad graph name {name!r}")
        return self.graph_dir / f"{name}.json"

    def read_graph(self, name: str) -> dict:
        """The stored graph `name`, parsed; NotFound if there is none, one line if it is not a graph."""
        p = self.graph_path(name)
        if not p.exists():
            raise NotFound(f"no graph {name}")
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            raise MechscopeError(f"graph {name} is damaged (not readable JSON)") from None
        if not (isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)):
            raise MechscopeError(f"graph {name} is not a graph (no 'nodes' and 'links' lists)")
        return data

    def add_density(self, data: dict) -> list[str]:
        """Gives each feature node of a parsed graph its `density` (share of the index's tokens it fires on) from the
        feature index, for the page's density filter; nodes that already carry one, or that the index lacks, are left
        alone. Returns the top-level keys it changed (["nodes"] or []).
        """
        index = getattr(self, "index", None)
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if index is None or not hasattr(index, "densities") or not isinstance(nodes, list):
            return []
        feats = []
        for n in nodes:
            if isinstance(n, dict) and n.get("feature_type") == "cross layer transcoder" and n.get("density") is None:
                try:
                    feats.append((n, (int(n["layer"]), int(n["feature"]))))
                except (KeyError, TypeError, ValueError):
                    continue
        changed = False
        if feats:
            dens = index.densities([k for _, k in feats])
            for n, k in feats:
                if dens.get(k) is not None:
                    n["density"], changed = round(float(dens[k]), 6), True
        return ["nodes"] if changed else []

    def list_graphs(self) -> list[dict]:
        out = []
        # parsing a 20 MB graph for its metadata takes seconds: remember it per file version
        cache = self.__dict__.setdefault("_meta_cache", {})
        for p in sorted(self.graph_dir.glob("*.json"), key=lambda p: -p.stat().st_mtime):
            try:
                st = p.stat()
                key = (p.name, st.st_mtime_ns, st.st_size)
                if key not in cache:
                    cache[key] = json.loads(p.read_text())["metadata"]
                meta = cache[key]
            except (ValueError, KeyError, OSError):
                continue
            info = meta.get("info", {})
            out.append(
                {
                    "name": p.stem,
                    "prompt": meta.get("prompt", ""),
                    "model": info.get("model", ""),
                    "replacement_score": info.get("replacement_score"),
                    "input_completeness_score": input_completeness(info),
                    "ct_completeness_score": info.get("ct_completeness_score"),
                }
            )
        return out

    def trace(
        self,
        prompt: str,
        chat: bool,
        max_feature_nodes: int,
        targets: list[str],
        node_threshold: float | None = None,
        edge_threshold: float | None = None,
        heads: bool = False,
        logit_diff: tuple[str, str] | None = None,
    ) -> str:
        """Trace `prompt` into the store; returns the new graph's name. heads: split cross-position links by head;
        logit_diff: explain logit(A) − logit(B) instead of the top logits or `targets`."""
        from dataclasses import replace

        # the page traces like the CLI (the same config defaults) unless it asks otherwise; built now, so that its
        # memory limit reads $MECHSCOPE_MAX_MEMORY_GB as `serve` set it
        base = AttributionConfig()
        cfg = replace(
            base,
            max_feature_nodes=max_feature_nodes,
            targets=targets,
            node_threshold=node_threshold or base.node_threshold,
            edge_threshold=edge_threshold or base.edge_threshold,
            heads=heads,
            logit_diff=tuple(logit_diff) if logit_diff else None,
        )
        g = self.session.trace(prompt, cfg, chat=chat)
        name = f"{g.slug()}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        g.save(self.graph_path(name), labels=self.labels)
        return name

    def intervene(
        self,
        prompt: str,
        edits: list[dict],
        freeze_attention: bool,
        generate: int,
        chat: bool,
        watch: list[str] | None = None,
        top_k: int = 5,
        logit_ids: list[int] | None = None,
    ) -> dict:
        """Before vs after the edits; `logit_ids`: tokens whose centred logit comes back too (`logits`)."""
        from mechscope.interventions import Edit, parse_ref

        parsed = []
        for e in edits:
            mode = e.get("mode", "set")
            if mode not in ("set", "scale", "ablate"):
                raise MechscopeError(f"bad edit mode {mode!r}")
            parsed.append(Edit(parse_ref(str(e["feature"])), mode, float(e.get("value", 0.0))))
        if not parsed:
            raise MechscopeError("no features chosen")
        return self.session.intervene(
            prompt,
            parsed,
            generate=generate,
            freeze_attention=freeze_attention,
            chat=chat,
            watch=watch or None,
            top_k=top_k,
            logit_ids=logit_ids or None,
        )

    def check_probe(self, text: str, token: str | None, pos: int | None) -> int:
        """The position a probe will read; raises MechscopeError for text the model cannot take or a missing position.

        Only the tokenizer runs (no model), so bad requests are refused at once instead of after a wait in the queue.
        """
        from mechscope.features.probe import probe_position

        return probe_position(self.model.tokenize(text).strs, token, pos)

    def probe(self, text: str, token: str | None, pos: int | None, limit: int) -> dict:
        # the session's index is None when it describes other transcoders: then hits rank by raw activation, unlabelled
        return self.session.probe(text, token=token, pos=pos, limit=limit)
