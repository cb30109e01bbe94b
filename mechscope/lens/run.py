"""Run the lens benchmark (or its probes) on a named model and set, as `mechscope eval-lens` and
`mechscope probe-lens` do, and render its table.

>>> res = run_lens("gemma3-270m", LensConfig(subset="quick"))          # doctest: +SKIP
>>> print(render(res))                                                  # doctest: +SKIP
>>> res = run_probes_named("gemma3-270m", ProbeConfig())                # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.lens.evaluate import LensConfig, evaluate_lens
from mechscope.lens.probe_config import ProbeConfig
from mechscope.provenance import stamp


def run_lens(
    model_name: str, cfg: LensConfig, transcoders: str | None = None, index: str | None = None, suite: str | None = None
) -> dict:
    """Load the model, its set and (if it matches) its feature index, run the suite; paths in the result are
    portable (relative to the package, or named), so a committed lens.json says nothing about this machine."""
    from mechscope.features import FeatureIndex, index_path
    from mechscope.lens.suite import load_suite
    from mechscope.models import load_model
    from mechscope.paths import cache_dir, portable_path
    from mechscope.transcoders import load_default_transcoders
    from mechscope.transcoders.registry import find_transcoders

    loaded = load_suite(suite)  # bad suites fail before the model loads
    find_transcoders(model_name, transcoders)
    if index and not Path(index).exists():
        raise MechscopeError(f"feature index {index} not found")
    model = load_model(model_name)
    ts = load_default_transcoders(model, transcoders)
    if cfg.subset == "swaps":  # no graphs: labels and densities are not read
        ix = None
    elif index:
        ix = FeatureIndex(index, model.tokenizer)
        if not ix.matches(ts):
            raise MechscopeError(f"feature index {index} was built for another transcoder set")
    else:
        try:
            ix = FeatureIndex.matching(index_path(model_name), ts, model.tokenizer)
        except MechscopeError:
            ix = None
    res = evaluate_lens(model, ts, ix, loaded, cfg)
    res["transcoders"] = portable_path(res["transcoders"])
    if res.get("index"):
        ip = res["index"]["path"]
        # the shipped index is unpacked into the cache: name the archive, not this machine's cache
        res["index"]["path"] = (
            f"shipped index of {model_name}" if ip.startswith(str(cache_dir())) else portable_path(ip)
        )
    res["suite"]["path"] = portable_path(res["suite"]["path"])
    return stamp(res, set_dir=ts.meta.get("path") or None, index=ix.path if ix is not None else None)


def run_probes_named(
    model_name: str, cfg: ProbeConfig, transcoders: str | None = None, suite: str | None = None
) -> dict:
    """Load the model and set, run the probes (`run_probes`); the set's path in the result is portable. Bad
    input (a suite, a corpus, a set that does not fit the model) is refused before the long work starts."""
    from mechscope.lens.probes import run_probes
    from mechscope.lens.suite import load_suite
    from mechscope.models import load_model
    from mechscope.paths import portable_path
    from mechscope.transcoders import load_default_transcoders
    from mechscope.transcoders.registry import find_transcoders

    loaded = load_suite(suite)
    find_transcoders(model_name, transcoders)
    if "dense" in cfg.probes:
        from mechscope.corpus.sources import validate_corpus

        validate_corpus(cfg.dense_corpus, "heldout")
    model = load_model(model_name)
    ts = load_default_transcoders(model, transcoders)  # one line when its layers or width do not fit the model
    res = run_probes(model, ts, loaded, cfg)
    res["set"]["path"] = portable_path(res["set"]["path"])
    res["suite"]["path"] = portable_path(res["suite"]["path"])
    return stamp(res, set_dir=ts.meta.get("path") or None)


def _fmt(v) -> str:
    return "   –" if v is None else f"{v:5.2f}"


OLD_NAMES = {"input_completeness": "completeness"}  # what lens.json written before the rename calls a key


def render(res: dict) -> str:
    if res["config"]["subset"] == "swaps":
        return _render_swaps(res)
    cols = [
        ("swap", "swap_success"),
        ("feat", "feature_share"),
        ("tok", "token_share"),
        ("err", "error_share"),
        ("ct_rep", "ct_replacement"),
        ("ct_cmp", "ct_completeness"),
        ("rep", "replacement"),
        ("in_cmp", "input_completeness"),
        ("rho", "validate_spearman"),
        ("rho_u", "validate_spearman_unfrozen"),
        ("spec", "top20_specific_share"),
        ("lab_f1", "top20_label_f1"),
        ("verif", "top20_verified_share"),
        ("dense", "top20_dense_share"),
        ("acc", "accuracy"),
    ]
    cut = f"; {len(res['not_run'])} items not run (budget)" if res.get("not_run") else ""
    lines = [
        (
            f"lens: {res['model']} · {res['transcoders']} · {res['suite']['n_prompts']} prompts, "
            f"{res['suite']['n_pairs']} swap pairs ({len(res['suite']['skipped'])} prompts skipped{cut})"
        ),
        f"{'category':<18}" + "".join(f"{h:>7}" for h, _ in cols) + "  pairs",
    ]
    for name, agg in list(res["categories"].items()) + [("overall", res["overall"])]:
        lines.append(
            f"{name:<18}"
            + "".join(f"{_fmt(agg.get(k, agg.get(OLD_NAMES.get(k, k)))):>7}" for _, k in cols)
            + f"  {agg['n_pairs_applicable']}/{agg['n_pairs']}"
        )
    if res.get("index"):
        ix = res["index"]
        lines.append(
            f"index: held-out label F1 {_fmt(ix['label_f1_mean']).strip()}, features denser than 5%: "
            f"{ix['dense_share']:.3f}, dead {ix['dead_share']:.3f}"
        )
    else:
        lines.append("index: none for this transcoder set (label and density numbers left out)")
    lines.append(
        "targets: "
        + ", ".join(f"{k} {'✓' if t['met'] else '✗' if t['met'] is False else '–'}" for k, t in res["targets"].items())
    )
    return "\n".join(lines)


def _render_swaps(res: dict) -> str:
    """The swaps-only pass: success per category at each factor and at either."""
    xs = [k for k in res["overall"] if k.startswith("swap_success_x")]
    lines = [
        f"lens swaps: {res['model']} · {res['transcoders']} · {res['suite']['n_pairs']} swap pairs"
        + (f"; {len(res['not_run'])} not run (budget)" if res.get("not_run") else ""),
        f"{'category':<18}" + "".join(f"{k[len('swap_success_') :]:>7}" for k in xs) + f"{'either':>7}  judged",
    ]
    for name, agg in list(res["categories"].items()) + [("overall", res["overall"])]:
        lines.append(
            f"{name:<18}"
            + "".join(f"{_fmt(agg[k]):>7}" for k in xs + ["swap_success"])
            + f"  {agg['n_pairs_applicable']}/{agg['n_pairs']}"
        )
    return "\n".join(lines)
