"""Probes that judge a transcoder set in minutes, between training stages: the suite's features-only swaps at
each factor, FVU at the entity's positions against the rest, per-layer locate shares, and a dense-latent census.
One JSON per set, with the set's identity, so candidates can be compared side by side.

>>> res = run_probes(m, ts, load_suite(), ProbeConfig(probes=("swaps", "dense")))   # doctest: +SKIP
>>> print(render(res))                                                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

from mechscope.lens.config import LensConfig
from mechscope.lens.probe_config import DENSE_THRESHOLDS, ProbeConfig
from mechscope.lens.suite import Suite


def set_identity(path: str | Path) -> dict:
    """The set's path, the SHA-256 of its config.json (first 16 hex digits; "" without one) and its weight
    fingerprint (`set_fingerprint`, what feature indexes record)."""
    from mechscope.features.integrity import set_fingerprint

    cfg = Path(path) / "config.json"
    try:
        sha = hashlib.sha256(cfg.read_bytes()).hexdigest()[:16]
    except OSError:
        sha = ""
    return {"path": str(path), "config_sha256": sha, "fingerprint": set_fingerprint(path)}


def _swaps(model, ts, suite: Suite, cfg: ProbeConfig, clean: dict) -> dict:
    from mechscope.lens.swaps import evaluate_swaps

    lc = LensConfig(
        subset=cfg.subset,
        categories=cfg.categories,
        factors=cfg.factors,
        swap_span=cfg.swap_span,
        progress=cfg.progress,
    )
    res = evaluate_swaps(model, ts, suite, lc, clean=clean)
    keep = ("recipient", "donor", "category", "applicable", "success", "refused")
    pairs = [{k: v for k, v in s.items() if k in keep or k.startswith(("success_x", "top1_x"))} for s in res["swaps"]]
    return {"overall": res["overall"], "categories": res["categories"], "pairs": pairs}


def run_probes(model, ts, suite: Suite, cfg: ProbeConfig | None = None) -> dict:
    """Run the probes `cfg.probes` on one model and transcoder set; one JSON-able dict (see docs/lens.md, Probes).

    Keys: `model`, `set` (`set_identity`), `config`, `suite`, then one entry per probe run — `swaps` (overall,
    categories, pairs), `fvu` (`fvu_by_position`), `locate` (`locate_shares`), `dense` (`dense_census`) — and
    `seconds` per probe.
    """
    from mechscope.lens.swaps import clean_answers, select

    cfg = cfg or ProbeConfig()
    t0 = time.time()
    suite = select(
        suite.for_model(model.name, model.tokenizer), LensConfig(subset=cfg.subset, categories=cfg.categories)
    )
    res: dict = {
        "model": model.name,
        "set": set_identity(ts.meta.get("path", "")),
        "config": asdict(cfg),
        "suite": {"path": suite.path, "n_prompts": len(suite.prompts), "n_pairs": len(suite.swaps)},
        "seconds": {},
    }
    clean = None
    if {"swaps", "locate"} & set(cfg.probes):
        clean = clean_answers(model, suite)  # once, for both
    for name in cfg.probes:
        t = time.time()
        if name == "swaps":
            res["swaps"] = _swaps(model, ts, suite, cfg, clean)
        elif name == "fvu":
            from mechscope.lens.fvu_position import entity_positions, fvu_by_position

            res["fvu"] = fvu_by_position(model, ts, entity_positions(model, suite))
        elif name == "locate":
            from mechscope.lens.locate_shares import locate_shares

            res["locate"] = locate_shares(model, ts, suite, clean, cfg.locate_span, cfg.locate_batch, cfg.progress)
        else:
            from mechscope.lens.census import dense_census

            res["dense"] = dense_census(
                model, ts, cfg.dense_corpus, cfg.dense_tokens, cfg.dense_seq_len, cfg.dense_batch, cfg.progress
            )
        res["seconds"][name] = round(time.time() - t, 1)
    res["elapsed_s"] = round(time.time() - t0, 1)
    return res


def _f(v, w: int = 6, p: int = 3) -> str:
    return f"{'–':>{w}}" if v is None else f"{v:>{w}.{p}f}"


def render(res: dict) -> str:
    """A compact table: swap success, FVU by position, locate shares and the census, per layer where they have one."""
    s = res["set"]
    lines = [
        f"probes: {res['model']} · {s['path']} · config {s['config_sha256'] or '–'} · {res['elapsed_s']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in res['seconds'].items())})"
    ]
    if "swaps" in res:
        o = res["swaps"]["overall"]
        xs = "  ".join(
            f"x{k[len('swap_success_x') :]} {_f(v).strip()}" for k, v in o.items() if k.startswith("swap_success_x")
        )
        lines.append(
            f"swaps: {o['n_pairs_applicable']} of {o['n_pairs']} pairs judged; success {xs}  either "
            f"{_f(o['swap_success']).strip()}"
        )
    fvu, loc, den = res.get("fvu"), res.get("locate"), res.get("dense")
    if fvu:
        lines.append(
            f"FVU ({fvu['n_tokens_entity']} entity / {fvu['n_tokens_rest']} other tokens of {fvu['n_prompts']} prompts): "
            f"entity {fvu['mean_fvu_entity']:.3f}, rest {fvu['mean_fvu_rest']:.3f}, all {fvu['mean_fvu_all']:.3f} "
            "(means over layers)"
        )
    if loc:
        if loc["shares"]:
            sh = loc["shares"]
            lines.append(
                f"locate ({loc['n_pairs_scored']} pairs, span {loc['span']}): shares features {sh['features']:.3f}, "
                f"skip {sh['skip']:.3f}, error {sh['error']:.3f}, embedding {sh['embedding']:.3f}"
            )
        else:
            lines.append("locate: no judged pair to locate")
    if den:
        t = den["totals"]
        over = ", ".join(f">{x:g}: {t[f'over_{x:g}']}" for x in DENSE_THRESHOLDS)
        lines.append(
            f"dense census ({den['tokens']} tokens of {den['corpus']}, {den['n_latents']} latents): {over}, "
            f"dead {t['dead']}"
        )
    n_layers = len((fvu or den or {}).get("per_layer") or []) or len(
        ((loc or {}).get("shares_per_layer") or {}).get("features") or []
    )
    if n_layers:
        head = f"{'layer':>5}"
        if fvu:
            head += f"{'fvu_ent':>8}{'fvu_rest':>9}{'fvu_all':>8}"
        if loc and loc["shares"]:
            head += f"{'feat':>7}{'skip':>7}{'err':>7}"
        if den:
            head += "".join(f"{'>' + format(x, 'g'):>6}" for x in DENSE_THRESHOLDS) + f"{'dead':>6}"
        lines.append(head)
        for l in range(n_layers):
            row = f"{l:>5}"
            if fvu:
                p = fvu["per_layer"][l]
                row += f"{_f(p['fvu_entity'], 8)}{_f(p['fvu_rest'], 9)}{_f(p['fvu_all'], 8)}"
            if loc and loc["shares"]:
                row += "".join(_f(loc["shares_per_layer"][c][l], 7) for c in ("features", "skip", "error"))
            if den:
                p = den["per_layer"][l]
                row += "".join(f"{p[f'over_{x:g}']:>6}" for x in DENSE_THRESHOLDS) + f"{p['dead']:>6}"
            lines.append(row)
    return "\n".join(lines)
