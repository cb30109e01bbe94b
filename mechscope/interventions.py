"""Steer, ablate and swap transcoder features, and check what an attribution graph predicted.

An edit changes feature activations at one layer; the MLP output receives `decode(edited) − decode(original)`,
so the transcoder's error term is kept (an edit is never undone by the error) and later layers re-encode
their features from the modified residual stream: effects propagate.

Feature specs: `L/F` (every position, including generated tokens) or `L/F@P` (prompt position P; negative
counts from the end). A supernode is a named group, `NAME=L/F@P,L/F@P`, usable wherever a feature is.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.cancel import checkpoint
from mechscope.errors import MechscopeError
from mechscope.guards import check_forward
from mechscope.models.adapter import ModelAdapter
from mechscope.transcoders.module import TranscoderSet

_SPEC = re.compile(r"^(\d+)/(\d+)(?:@(-?\d+))?$")


@dataclass(frozen=True)
class FeatureRef:
    layer: int
    feature: int
    pos: int | None = None      # None: every position

    def __str__(self) -> str:
        return f"{self.layer}/{self.feature}" + (f"@{self.pos}" if self.pos is not None else "")


@dataclass
class Edit:
    """mode: 'set' (activation := value), 'scale' (activation *= value), 'ablate' (activation := 0)."""

    ref: FeatureRef
    mode: str
    value: float = 0.0


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


def parse_edits(sets: list[str], scales: list[str], ablates: list[str], supernodes: Supernodes | None = None) -> list[Edit]:
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


def check_edits(model: ModelAdapter, ts: TranscoderSet, edits: list[Edit], n_pos: int) -> list[Edit]:
    """Validate ranges before anything runs; negative positions become absolute."""
    out = []
    for e in edits:
        r = e.ref
        if not 0 <= r.layer < len(ts):
            raise MechscopeError(f"feature {r}: layer {r.layer} out of range (0..{len(ts) - 1})")
        if not 0 <= r.feature < ts.d_transcoder:
            raise MechscopeError(f"feature {r}: index {r.feature} out of range (0..{ts.d_transcoder - 1})")
        pos = r.pos
        if pos is not None:
            if not -n_pos <= pos < n_pos:
                raise MechscopeError(f"feature {r}: position {pos} out of range for a {n_pos}-token prompt")
            pos %= n_pos
        if not math.isfinite(e.value):
            raise MechscopeError(f"feature {r}: value must be finite")
        out.append(Edit(FeatureRef(r.layer, r.feature, pos), e.mode, e.value))
    return out


def _edit_hooks(model: ModelAdapter, ts: TranscoderSet, edits: list[Edit],
                skip_patches: dict[int, dict[int, Tensor]] | None = None) -> dict:
    """Hooks applying `edits`, and optionally replacing the skip term's output at (layer, position) by
    W_skip · x_donor (skip_patches: layer -> position -> donor MLP input [d])."""
    by_layer: dict[int, list[Edit]] = {}
    for e in edits:
        by_layer.setdefault(e.ref.layer, []).append(e)
    skip_patches = skip_patches or {}
    for l in skip_patches:
        by_layer.setdefault(l, [])
    cur_in: dict[int, Tensor] = {}
    hooks = {}
    for l, es in by_layer.items():
        def rec(x: Tensor, l=l) -> None:
            cur_in[l] = x

        def out(y: Tensor, l=l, es=es) -> Tensor:
            tc = ts[l]
            acts = tc.encode(cur_in[l])                     # [b, n, F]
            edited = acts.clone()
            for e in es:
                sl = (slice(None), slice(None) if e.ref.pos is None else slice(e.ref.pos, e.ref.pos + 1), e.ref.feature)
                if e.ref.pos is not None and e.ref.pos >= acts.shape[1]:
                    continue
                if e.mode == "set":
                    edited[sl] = e.value
                elif e.mode == "scale":
                    edited[sl] = edited[sl] * e.value
                else:
                    edited[sl] = 0.0
            delta = (edited - acts) @ tc.W_dec.to(acts.dtype)
            for p, xd in skip_patches.get(l, {}).items():
                if p < delta.shape[1] and tc.W_skip is not None:
                    delta[:, p] += (xd.to(acts.dtype) - cur_in[l][:, p].to(acts.dtype)) @ tc.W_skip.T.to(acts.dtype)
            return y + delta.to(y.dtype)
        hooks[f"blocks.{l}.hook_mlp_in"] = rec
        hooks[f"blocks.{l}.hook_mlp_out"] = out
    return hooks


@torch.no_grad()
def run_with_edits(model: ModelAdapter, ts: TranscoderSet, ids: Tensor, edits: list[Edit],
                   patterns: dict[int, Tensor] | None = None,
                   skip_patches: dict[int, dict[int, Tensor]] | None = None) -> Tensor:
    """Logits [n, vocab] of the prompt `ids` [n] with `edits` applied (and attention frozen to `patterns`)."""
    with model.hooks(_edit_hooks(model, ts, edits, skip_patches)), model.attention_patterns(override=patterns):
        return model.forward(ids[None].to(model.device))[0].float()


def _topk(logits: Tensor, tok, k: int) -> list[dict]:
    p = torch.softmax(logits, -1)
    v, i = p.topk(k)
    return [{"token": tok.decode([int(t)]), "id": int(t), "prob": float(x)} for x, t in zip(v, i)]


@torch.no_grad()
def _generate(model: ModelAdapter, ts: TranscoderSet, ids: Tensor, edits: list[Edit], n: int,
              skip_patches: dict[int, dict[int, Tensor]] | None = None) -> str:
    """Greedy continuation with edits re-applied at every step (no KV cache: edits change every layer)."""
    cur = ids.clone()
    for _ in range(n):
        checkpoint()                        # a cancelled server job stops between generated tokens
        logits = run_with_edits(model, ts, cur, edits, skip_patches=skip_patches)
        nxt = int(logits[-1].argmax())
        cur = torch.cat([cur, torch.tensor([nxt])])
        if nxt == model.tokenizer.eos_token_id:
            break
    return model.tokenizer.decode(cur[ids.shape[0]:].tolist())


def intervene(model: ModelAdapter, ts: TranscoderSet, prompt: str, edits: list[Edit], generate: int = 0,
              freeze_attention: bool = False, top_k: int = 5, chat: bool = False,
              watch: list[str] | None = None, skip_patches: dict[int, dict[int, Tensor]] | None = None) -> dict:
    """Apply edits; report top-k next-token probabilities (and generations) before and after.

    >>> res = intervene(m, ts, "Dallas is in the state of", parse_edits([], ["12/345@5=-2"], []))   # doctest: +SKIP
    """
    toks = model.tokenize(prompt, chat=chat)
    ids = toks.ids
    if generate < 0:
        raise MechscopeError("--generate must be ≥ 0")
    check_forward(model, ts, ids.shape[0], generate=generate, what=f"intervening on {ids.shape[0]} tokens (+{generate} generated)")
    edits = check_edits(model, ts, edits, ids.shape[0])
    patterns: dict[int, Tensor] = {}
    with torch.no_grad(), model.attention_patterns(record=patterns):
        clean = model.forward(ids[None].to(model.device))[0].float()
    after = run_with_edits(model, ts, ids, edits, patterns if freeze_attention else None, skip_patches)
    res = {"prompt": prompt, "prompt_tokens": toks.strs, "edits": [{"feature": str(e.ref), "mode": e.mode, "value": e.value} for e in edits],
           "freeze_attention": freeze_attention, "before": _topk(clean[-1], model.tokenizer, top_k),
           "after": _topk(after[-1], model.tokenizer, top_k)}
    if watch:
        pb, pa = torch.softmax(clean[-1], -1), torch.softmax(after[-1], -1)
        res["watch"] = [{"token": w, "before": float(pb[model.token_id(w)]), "after": float(pa[model.token_id(w)])} for w in watch]
    if generate:
        res["generation_before"] = _generate(model, ts, ids, [], generate)
        res["generation_after"] = _generate(model, ts, ids, edits, generate, skip_patches)
    return res


# ---- concept swap -------------------------------------------------------------------------------
def _differing_positions(a: list[str], b: list[str]) -> tuple[list[int], list[int]]:
    """Where two prompts differ: aligned positions if equally long, else the last token of the differing span."""
    if len(a) == len(b):
        d = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return d, d
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < min(len(a), len(b)) - pre and a[-1 - suf] == b[-1 - suf]:
        suf += 1
    if pre >= len(a) - suf or pre >= len(b) - suf:
        return [], []
    return [len(a) - suf - 1], [len(b) - suf - 1]


def aligned_positions(a: list[str], b: list[str], span: str = "diff") -> tuple[list[int], list[int]]:
    """Recipient and donor positions to swap. span='diff': where the prompts differ; span='rest': that,
    plus every later position, aligned from the end (the shared suffix, e.g. " is in the state of")."""
    pa, pb = _differing_positions(a, b)
    if span == "diff" or not pa:
        return pa, pb
    if span != "rest":
        raise MechscopeError(f"--span {span!r}: expected 'diff' or 'rest'")
    first = pa[0] if len(a) == len(b) else pa[-1]
    n = len(a) - first
    if len(b) - n < 0:
        raise MechscopeError("--span rest: the donor is shorter than the recipient's swapped span")
    return list(range(first, len(a))), list(range(len(b) - n, len(b)))


@torch.no_grad()
def mlp_inputs(model: ModelAdapter, ids: Tensor) -> list[Tensor]:
    """Every layer's MLP input for a prompt: [n_layers] of [n, d]."""
    cache = model.run_with_cache(ids[None].to(model.device), [f"blocks.{l}.hook_mlp_in" for l in range(model.n_layers)], logits=False)
    return [cache[f"blocks.{l}.hook_mlp_in"][0] for l in range(model.n_layers)]


@torch.no_grad()
def active_features(model: ModelAdapter, ts: TranscoderSet, ids: Tensor, pos: int) -> list[tuple[int, int, float]]:
    """(layer, feature, activation) of every feature active at `pos`, largest activation first."""
    return _features_at(ts, mlp_inputs(model, ids), pos)


@torch.no_grad()
def _features_at(ts: TranscoderSet, xs: list[Tensor], pos: int) -> list[tuple[int, int, float]]:
    """active_features from already computed MLP inputs (xs: n_layers x [n, d])."""
    out = []
    for l, x in enumerate(xs):
        a = ts[l].encode(x[pos].float())
        for f in a.nonzero().squeeze(-1).tolist():
            out.append((l, f, float(a[f])))
    return sorted(out, key=lambda t: -t[2])


def swap(model: ModelAdapter, ts: TranscoderSet, prompt: str, donor: str, remove: list[Edit] | None = None,
         pos: list[int] | None = None, donor_pos: list[int] | None = None, factor: float = 1.0,
         max_layer: int | None = None, generate: int = 0, top_k: int = 5, watch: list[str] | None = None,
         span: str = "diff", with_skip: bool = False) -> dict:
    """Concept transplant: suppress the recipient's concept features and inject the donor's.

    Positions default to those where the two prompts' tokens differ (e.g. " Dallas" vs " Oakland"), or with
    span='rest' to those and every later position. With `remove=None` ("auto") every feature active there
    at layers ≤ max_layer is ablated and the donor's features at its position are set to factor × their
    donor activation. with_skip also replaces the transcoders' linear skip term there by the donor's
    (the part of the MLP that no feature represents; see `locate_concept`).

    >>> swap(m, ts, "Michael Jordan plays the sport of", "Tiger Woods plays the sport of", span="rest", factor=1.5)  # doctest: +SKIP
    """
    if not math.isfinite(factor):
        raise MechscopeError("--factor must be finite")
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    n_max = max(len(rt.strs), len(dt.strs))
    check_forward(model, ts, n_max, generate=max(generate, 0), what=f"swapping on {n_max} tokens (+{generate} generated)")
    diff_r, diff_d = aligned_positions(rt.strs, dt.strs, span)
    pos = pos or diff_r
    donor_pos = donor_pos or diff_d
    if not pos or not donor_pos:
        raise MechscopeError("the prompts do not differ: give --pos and --donor-pos")
    if len(pos) != len(donor_pos):
        raise MechscopeError("--pos and --donor-pos need the same number of positions")
    for name, ps, n in (("--pos", pos, len(rt.strs)), ("--donor-pos", donor_pos, len(dt.strs))):
        bad = [p for p in ps if not -n <= p < n]
        if bad:
            raise MechscopeError(f"{name} {bad[0]} out of range for a {n}-token prompt")
    pos, donor_pos = [p % len(rt.strs) for p in pos], [q % len(dt.strs) for q in donor_pos]
    max_layer = model.n_layers - 1 if max_layer is None else max_layer
    edits: list[Edit] = []
    removed, injected = [], []
    xr = mlp_inputs(model, rt.ids) if remove is None else []     # one forward per prompt, not per position
    xd = mlp_inputs(model, dt.ids)
    for p, q in zip(pos, donor_pos):
        if remove is None:
            for l, f, a in _features_at(ts, xr, p):
                if l <= max_layer:
                    edits.append(Edit(FeatureRef(l, f, p), "ablate"))
                    removed.append(f"{l}/{f}@{p}")
        for l, f, a in _features_at(ts, xd, q):
            if l <= max_layer:
                edits.append(Edit(FeatureRef(l, f, p), "set", a * factor))
                injected.append(f"{l}/{f}@{p}={a * factor:.3g}")
    if remove:
        edits = list(remove) + edits
        removed = [str(e.ref) for e in remove]
    skip_patches = None
    if with_skip:
        skip_patches = {l: {p: xd[l][q] for p, q in zip(pos, donor_pos)} for l in range(max_layer + 1)}
    res = intervene(model, ts, prompt, edits, generate=generate, top_k=top_k, watch=watch, skip_patches=skip_patches)
    res.update({"donor": donor, "positions": pos, "donor_positions": donor_pos, "factor": factor, "span": span,
                "with_skip": with_skip, "removed": removed, "injected": injected, "n_edits": len(edits)})
    return res


LOCATE_COMPONENTS = ("mlp_out", "features", "skip", "error", "embedding")   # what locate_concept patches, in order


@torch.no_grad()
def locate_concept(model: ModelAdapter, ts: TranscoderSet, prompt: str, donor: str, watch: list[str],
                   span: str = "rest", layers: list[int] | None = None) -> dict:
    """Where does the difference between two prompts live? Patch one component of every MLP output (at the
    aligned positions, the given layers) from the donor run into the recipient run and report the watched
    tokens' probabilities. Components: the whole MLP output, the transcoder features' part, the linear skip
    part, the error (MLP − transcoder) — plus the token embedding alone.

    A concept swap through features can only work if the 'features' row moves the answer; when 'skip' or
    'error' does instead, the transcoders have not learned the concept as features.

    >>> locate_concept(m, ts, "Dallas is in the state of", "Berkeley is in the state of", [" Texas", " California"])  # doctest: +SKIP
    """
    rt, dt = model.tokenize(prompt), model.tokenize(donor)
    check_forward(model, ts, max(len(rt.strs), len(dt.strs)), what="locating the concept")
    pos, dpos = aligned_positions(rt.strs, dt.strs, span)
    if not pos:
        raise MechscopeError("the prompts do not differ")
    layers = list(range(model.n_layers)) if layers is None else layers
    ids_w = [model.token_id(w) for w in watch]
    sites = [f"blocks.{l}.hook_mlp_in" for l in layers] + [f"blocks.{l}.hook_mlp_out" for l in layers]
    donor_cache = model.run_with_cache(dt.ids[None].to(model.device), sites + ["hook_embed"], logits=False)

    def parts(l: int, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        tc = ts[l]
        xf = x.float()
        feat = tc.encode(xf) @ tc.W_dec.float()
        skip = tc.skip(xf).float()
        return {"mlp_out": y.float(), "features": feat, "skip": skip, "error": y.float() - feat - skip - tc.b_dec.float()}

    # the donor's side is fixed: split it once, not once per patched run
    donor_parts = {l: parts(l, donor_cache[f"blocks.{l}.hook_mlp_in"][:, dpos], donor_cache[f"blocks.{l}.hook_mlp_out"][:, dpos])
                   for l in layers}

    def run(component: str) -> list[float]:
        cur_in: dict[int, Tensor] = {}
        hooks = {}
        if component == "embedding":
            def emb(e: Tensor) -> Tensor:
                e = e.clone()
                e[:, pos] = donor_cache["hook_embed"][:, dpos].to(e.dtype)
                return e
            hooks["hook_embed"] = emb
        elif component != "none":
            for l in layers:
                def rec(x: Tensor, l=l) -> None:
                    cur_in[l] = x

                def out(y: Tensor, l=l) -> Tensor:
                    mine = parts(l, cur_in[l][:, pos], y[:, pos])[component]
                    y = y.clone()
                    y[:, pos] += (donor_parts[l][component] - mine).to(y.dtype)
                    return y
                hooks[f"blocks.{l}.hook_mlp_in"] = rec
                hooks[f"blocks.{l}.hook_mlp_out"] = out
        with model.hooks(hooks):
            lg = model.forward(rt.ids[None].to(model.device))[0, -1].float()
        p = torch.softmax(lg, -1)
        return [float(p[i]) for i in ids_w]

    rows = {comp: run(comp) for comp in ("none",) + LOCATE_COMPONENTS}
    return {"prompt": prompt, "donor": donor, "watch": watch, "positions": pos, "donor_positions": dpos,
            "layers": layers, "probs": rows}


# ---- graph validation ----------------------------------------------------------------------------
def spearman(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ra, rb = ta.argsort().argsort().double(), tb.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra @ rb) / den) if den > 0 else float("nan")


def total_effects(graph) -> Tensor:
    """Signed total effect of every node on every target through feature→feature paths: A + A·A + ...  [N, N]"""
    A = graph.A.clone()
    fs = graph.kinds()[0]
    # only features propagate (their activation moves 1:1 with their pre-activation while active)
    prop = torch.zeros_like(A)
    prop[:, fs] = A[:, fs]
    total, term = A.clone(), A.clone()
    for _ in range(graph.meta["n_layers"] + 2):
        term = prop @ term
        if float(term.abs().max()) < 1e-9:
            break
        total += term
    return total


@torch.no_grad()
def validate_graph(model: ModelAdapter, ts: TranscoderSet, graph, top_n: int = 20) -> dict:
    """Predicted (graph) vs actual (ablation) effect on the first logit target of the top-N features.

    Predicted: −(total linear effect of the node on the target's centred logit), from the unpruned graph.
    Actual: the change in that centred logit when the feature is ablated at its position in the real model
    (attention frozen to the clean run).
    """
    toks = model.tokenize(graph.meta["prompt"])
    ids = toks.ids
    fs, _, _, ls = graph.kinds()
    tgt = ls.start
    tok_id = graph.nodes[tgt]["feature"]
    if tok_id >= model.vocab_size:
        raise MechscopeError("validation needs a token logit target, not a logit difference")
    T = total_effects(graph)
    infl = graph.node_influence()
    feats = sorted(range(fs.stop), key=lambda i: -float(infl[i]))[:top_n]
    patterns: dict[int, Tensor] = {}
    with model.attention_patterns(record=patterns):
        clean = model.forward(ids[None].to(model.device))[0, -1].float()
    base = float(clean[tok_id] - clean.mean())
    rows = []
    for i in feats:
        nd = graph.nodes[i]
        ref = FeatureRef(int(nd["layer"]), nd["feature"], nd["ctx_idx"])
        after = run_with_edits(model, ts, ids, [Edit(ref, "ablate")], patterns)[-1]
        actual = float(after[tok_id] - after.mean()) - base
        rows.append({"node": nd["node_id"], "feature": str(ref), "predicted": -float(T[tgt, i]), "actual": actual,
                     "influence": float(infl[i])})
    rho = spearman([r["predicted"] for r in rows], [r["actual"] for r in rows]) if len(rows) > 2 else float("nan")
    sign = sum((r["predicted"] > 0) == (r["actual"] > 0) for r in rows) / max(1, len(rows))
    return {"target": graph.nodes[tgt]["clerp"], "n": len(rows), "spearman": rho, "sign_agreement": sign, "nodes": rows}
