"""Tracing at the real shapes of bigger models, without downloading anything: random-weight models and random
transcoder sets built locally at the published configurations, then traced (not a test).

    python benchmarks/bench_scale.py --shapes qwen3-0.6b                 # every row of one shape
    python benchmarks/bench_scale.py --shapes gemma-2-2b --max-gb 20     # allow a larger estimated peak
    python benchmarks/bench_scale.py --estimate                          # the estimates only, nothing built

Each shape is built once into ~/.cache/mechscope/scale/<shape>/ (model: float32 safetensors, memory-mapped when
loaded; set: mechscope's on-disk format, int8, memory-mapped), never committed. Each row (shape, prompt length,
feature-row budget) runs in a fresh process, so `peak_gb` is that process's peak resident memory (ru_maxrss,
file-backed pages of the mapped weights included). A row whose estimate (`precheck.resident_parts`, the same
estimate `mechscope trace` refuses with) exceeds --max-gb is not run; its command and estimate are printed and
recorded under "skipped". Rows go to reports/scale/bench_scale.json with a meta block (commit, CPU, load).

Shapes (hyper-parameters from each model's published config.json; widths from the published transcoder sets):
    gemma-2-2b    google/gemma-2-2b: hidden 2304, 26 layers, MLP 9216, 8 heads / 4 kv, head_dim 256, vocab 256000,
                  soft-caps 50 / 30, sliding window 4096 on alternate layers. Set: Gemma Scope transcoders
                  (google/gemma-scope-2b-pt-transcoders, as circuit-tracer's mntss/gemma-scope-transcoders), width
                  16,384 per layer, JumpReLU, no skip.
    llama-3.2-1b  meta-llama/Llama-3.2-1B: hidden 2048, 16 layers, MLP 8192, 32 heads / 8 kv (head_dim 64), vocab
                  128256, tied embeddings, Llama 3 RoPE scaling (factor 32). Set: the published cross-layer
                  transcoder mntss/clt-llama-3.2-1b-524k, 524,288 features = 32,768 per layer, every feature
                  writing to its layer and all later ones, JumpReLU.
    qwen3-0.6b    Qwen/Qwen3-0.6B: hidden 1024, 28 layers, MLP 3072, 16 heads / 8 kv, head_dim 128, vocab 151936,
                  tied embeddings. Set: mwhanna/qwen3-0.6b-transcoders-lowl0, per-layer with skip; width 163,840
                  per layer (not confirmed from the set's files here: see docs/scale.md).
    qwen3-1.7b    Qwen/Qwen3-1.7B: hidden 2048, 28 layers, MLP 6144, 16 heads / 8 kv, head_dim 128, vocab 151936,
                  tied embeddings. Set: mwhanna/qwen3-1.7b-transcoders-lowl0, as above (width 163,840, unconfirmed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "scale" / "bench_scale.json"
TOKENS = (16, 64, 256)
ROWS = (512, 2048)
L0 = 100  # active features per token and layer the random sets are calibrated to (published sets: ~50-150)


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # gemma2 | llama | qwen3
    config: dict  # the transformers config's hyper-parameters
    kind: str  # plt | clt
    width: int  # features per layer
    skip: bool
    cite: str
    extra: dict = field(default_factory=dict)


SHAPES = {
    "gemma-2-2b": Shape(
        "gemma-2-2b",
        "gemma2",
        dict(
            hidden_size=2304,
            num_hidden_layers=26,
            intermediate_size=9216,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            vocab_size=256000,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
        ),
        "plt",
        16384,
        False,
        "google/gemma-2-2b config.json; Gemma Scope transcoders width_16k",
    ),
    "llama-3.2-1b": Shape(
        "llama-3.2-1b",
        "llama",
        dict(
            hidden_size=2048,
            num_hidden_layers=16,
            intermediate_size=8192,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            rope_parameters={
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_theta": 500000.0,
            },
        ),
        "clt",
        32768,
        False,
        "meta-llama/Llama-3.2-1B config.json; mntss/clt-llama-3.2-1b-524k (524,288 = 16 x 32,768)",
    ),
    "qwen3-0.6b": Shape(
        "qwen3-0.6b",
        "qwen3",
        dict(
            hidden_size=1024,
            num_hidden_layers=28,
            intermediate_size=3072,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
            max_position_embeddings=40960,
        ),
        "plt",
        163840,
        True,
        "Qwen/Qwen3-0.6B config.json; mwhanna/qwen3-0.6b-transcoders-lowl0 (width unconfirmed)",
    ),
    "qwen3-1.7b": Shape(
        "qwen3-1.7b",
        "qwen3",
        dict(
            hidden_size=2048,
            num_hidden_layers=28,
            intermediate_size=6144,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
            max_position_embeddings=40960,
        ),
        "plt",
        163840,
        True,
        "Qwen/Qwen3-1.7B config.json; mwhanna/qwen3-1.7b-transcoders-lowl0 (width unconfirmed)",
    ),
}


def tiny(shape: Shape) -> Shape:
    """The same family and set kind, scaled down to seconds (for the tests)."""
    c = dict(shape.config)
    c.update(hidden_size=32, num_hidden_layers=3, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    c.update(head_dim=8, vocab_size=300, max_position_embeddings=256)
    if "query_pre_attn_scalar" in c:
        c.update(query_pre_attn_scalar=8, sliding_window=4)
    if "rope_parameters" in c:
        c["rope_parameters"] = {**c["rope_parameters"], "original_max_position_embeddings": 16}
    return replace(shape, name=shape.name + "-tiny", config=c, width=64)


def cache_root() -> Path:
    from mechscope.paths import cache_dir

    return cache_dir() / "scale"


# ---- building ------------------------------------------------------------------------------------------------
def _hf_config(shape: Shape):
    from transformers import Gemma2Config, LlamaConfig, Qwen3Config

    ids = dict(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    c = dict(shape.config)
    if shape.family == "gemma2":
        L = c["num_hidden_layers"]
        return Gemma2Config(
            **ids, **c, layer_types=["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(L)]
        )
    if shape.family == "qwen3":
        return Qwen3Config(**ids, **c)
    return LlamaConfig(**ids, **c)


def _tokenizer(path: Path, vocab: int, bos: bool) -> None:
    """A word-level tokenizer of words w4..w999 (ids below the model's vocabulary): a prompt of n words is n
    tokens (plus BOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, min(vocab, 1000))})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(path)


def _bos(shape: Shape) -> bool:
    return shape.family in ("gemma2", "llama")


def prompt(shape: Shape, tokens: int) -> str:
    n = tokens - 1 if _bos(shape) else tokens
    return " ".join(f"w{4 + (i * 37) % 900}" for i in range(n))


def _chunks(shape0: tuple[int, ...], gen, rows: int = 4096):
    for a in range(0, shape0[0], rows):
        yield gen(a, min(a + rows, shape0[0]))


def build_model(shape: Shape, dest: Path) -> Path:
    """config.json, a word-level tokenizer and random float32 weights, written tensor by tensor."""
    from transformers import AutoModelForCausalLM

    from mechscope.transcoders.mapped import write_safetensors

    if (dest / "done").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    cfg = _hf_config(shape)
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(cfg)
    params = list(meta_model.named_parameters())  # tied weights once
    specs = [(n, tuple(p.shape), torch.float32) for n, p in params]
    gain = 0.0 if shape.family == "gemma2" else 1.0  # Gemma stores gain - 1
    g = torch.Generator().manual_seed(0)

    def chunks(name: str):
        shp = dict((n, s) for n, s, _ in specs)[name]
        if "norm" in name:
            yield torch.full(shp, gain) + 0.02 * torch.randn(shp, generator=g)
            return
        yield from _chunks(shp, lambda a, b: 0.02 * torch.randn((b - a, *shp[1:]), generator=g))

    write_safetensors(dest / "model.safetensors", specs, chunks, {"format": "pt"})
    cfg.save_pretrained(dest)
    _tokenizer(dest, shape.config["vocab_size"], _bos(shape))
    (dest / "done").write_text("1")
    return dest


def build_set(shape: Shape, dest: Path) -> Path:
    """A random set in mechscope's format, int8 (per-row scales), JumpReLU calibrated to ~L0 features per token:
    encoder rows ~ N(0, 1/d), so a pre-activation of a unit-RMS input is ~N(0, 1) and the threshold is its
    (1 - L0/F) quantile."""
    from mechscope.paths import file_sha256
    from mechscope.transcoders.mapped import write_safetensors
    from mechscope.transcoders.storage import _HOOKS, FORMAT, FORMAT_VERSION, quantize_int8

    if (dest / "config.json").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    L, d, F = shape.config["num_hidden_layers"], shape.config["hidden_size"], shape.width
    theta = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - min(L0, F / 4) / F)))
    g = torch.Generator().manual_seed(1)
    files = {}

    def int8_chunks(rows_shape: tuple[int, ...], std: float):
        """(q, scale) pieces of a random matrix, quantized a block of rows at a time."""
        cache: dict = {}

        def q(name: str):
            key = name.removesuffix(".scale")
            if key not in cache:
                cache[key] = []
            if name.endswith(".scale"):
                yield from cache.pop(key)
                return
            for a in range(0, rows_shape[0], 2048):
                b = min(a + 2048, rows_shape[0])
                qq, s = quantize_int8(std * torch.randn((b - a, *rows_shape[1:]), generator=g))
                cache[key].append(s)
                yield qq

        return q

    def write(name: str, mats: dict[str, tuple[tuple[int, ...], float]], vecs: dict[str, torch.Tensor]) -> None:
        specs, gens = [], {}
        for key, (shp, std) in mats.items():
            gen = int8_chunks(shp, std)
            specs += [(key, shp, torch.int8), (f"{key}.scale", shp[:-1], torch.float16)]
            gens[key] = gens[f"{key}.scale"] = gen
        for key, v in vecs.items():
            specs.append((key, tuple(v.shape), torch.float16))
            gens[key] = lambda k, v=v: iter([v])
        write_safetensors(dest / name, specs, lambda k: gens[k](k), {"layer": name})
        files[name] = file_sha256(dest / name)

    for l in range(L):
        enc = {"W_enc": ((F, d), d**-0.5)}
        if shape.skip:
            enc["W_skip"] = ((d, d), 0.02)
        vecs = {"b_enc": torch.zeros(F), "threshold": torch.full((F,), theta), "b_dec": torch.zeros(d)}
        if shape.kind == "clt":
            write(f"enc_{l}.safetensors", enc, vecs)
            write(f"dec_{l}.safetensors", {"W_dec": ((F, L - l, d), 0.02)}, {})
        else:
            write(f"layer_{l}.safetensors", {**enc, "W_dec": ((F, d), 0.02)}, vecs)
    meta = {
        "model": shape.name,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_layers": L,
        "d_model": d,
        "d_transcoder": F,
        "activation": "jumprelu",
        "k": 0,
        "skip": shape.skip,
        "dtype": "int8",
        **_HOOKS,
        "files": files,
        "note": f"random weights at the shape of {shape.cite}",
    }
    if shape.kind == "clt":
        meta.update(kind="clt", max_write_layers=0)
    (dest / "config.json").write_text(json.dumps(meta, indent=2))
    return dest


def build(shape: Shape, root: Path | None = None) -> tuple[Path, Path]:
    root = root or cache_root() / shape.name
    return build_model(shape, root / "model"), build_set(shape, root / "transcoders")


# ---- measuring -----------------------------------------------------------------------------------------------
def estimate(shape: Shape, model_dir: Path | None, set_dir: Path | None, tokens: int, rows: int) -> dict:
    """The pre-trace estimate by part (GB), from the built files, or from the shape alone when not built."""
    from mechscope.attribution import AttributionConfig
    from mechscope.attribution.memory import set_resident_gb, trace_gb
    from mechscope.attribution.precheck import _SetShape, _Shape, model_shape, resident_parts, set_shape

    cfg = AttributionConfig(max_feature_nodes=rows)
    if model_dir is not None and set_dir is not None and (set_dir / "config.json").exists():
        src, mshape = model_shape(str(model_dir))
        meta = json.loads((set_dir / "config.json").read_text())
        return resident_parts(src, mshape, set_dir, meta, tokens, cfg)
    c = shape.config
    L, d, F, V = c["num_hidden_layers"], c["hidden_size"], shape.width, c["vocab_size"]
    hd = c.get("head_dim", d // c["num_attention_heads"])
    attn = d * hd * (c["num_attention_heads"] * 2 + c["num_key_value_heads"] * 2)
    n_params = L * (attn + 3 * d * c["intermediate_size"] + 4 * d) + V * d * (
        1 if c.get("tie_word_embeddings", shape.family == "gemma2") else 2
    )
    writes = L * (L + 1) // 2 if shape.kind == "clt" else L
    meta = {"n_layers": L, "d_model": d, "d_transcoder": F, "activation": "jumprelu", "k": 0, "skip": shape.skip}
    stored = {"enc": L * F * (d + 8) + (L * d * d if shape.skip else 0), "dec": writes * F * (d + 2)}
    mshape = _Shape(shape.name, L, d, V, c.get("max_position_embeddings", 2048), type("C", (), dict(c))())
    tc = set_shape({**meta, **({"kind": "clt", "max_write_layers": 0} if shape.kind == "clt" else {})})
    assert isinstance(tc, _SetShape)
    return {
        "model weights": n_params * 4 / 2**30,
        "transcoders (memory-mapped)": set_resident_gb(meta, stored, True, tokens),
        "tracing": trace_gb(mshape, tc, tokens, cfg),
    }


def run_row(shape: Shape, model_dir: Path, set_dir: Path, tokens: int, rows: int) -> dict:
    """Load (timed), trace one prompt of `tokens` tokens with `rows` feature rows (timed); peak RSS of this
    process."""
    from mechscope.attribution import AttributionConfig, attribute
    from mechscope.models import load_model
    from mechscope.transcoders import load_transcoders

    t = time.time()
    m = load_model(str(model_dir))
    ts = load_transcoders(set_dir, n_layers=m.n_layers, d_model=m.d_model)
    load_s = time.time() - t
    t = time.time()
    g = attribute(m, ts, prompt(shape, tokens), AttributionConfig(max_feature_nodes=rows))
    trace_s = time.time() - t
    return {
        "model": shape.name,
        "tokens": int(g.meta["n_pos"]),
        "rows": rows,
        "load_s": round(load_s, 2),
        "trace_s": round(trace_s, 2),
        "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "active_features": int(g.meta["n_active_features"]),
        "feature_nodes": g.n_feat,
        "mapped": bool(getattr(ts, "mapped", False)),
    }


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _meta() -> dict:
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "note": "peak_gb: ru_maxrss of a fresh process per row (mapped weight pages included); load_1min: the "
        "machine's 1-minute load average before and after the row (other work shares the machine)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen3-0.6b", help=f"comma-separated, of: {', '.join(SHAPES)}, or all")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--max-gb", type=float, default=8.0, help="run only rows whose estimated peak is at most this")
    ap.add_argument("--estimate", action="store_true", help="print the estimates only; build and run nothing")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--row", nargs=3, metavar=("SHAPE", "TOKENS", "ROWS"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.row:
        shape = SHAPES[a.row[0]]
        model_dir, set_dir = build(shape)
        print(json.dumps(run_row(shape, model_dir, set_dir, int(a.row[1]), int(a.row[2]))))
        return 0
    names = list(SHAPES) if a.shapes == "all" else a.shapes.split(",")
    tokens = [int(t) for t in a.tokens.split(",")]
    budgets = [int(r) for r in a.rows.split(",")]
    out = Path(a.out)
    done = json.loads(out.read_text()) if out.exists() else {"rows": [], "skipped": []}
    done["meta"] = _meta()
    for name in names:
        shape = SHAPES[name]
        root = cache_root() / name
        built = (root / "model" / "done").exists() and (root / "transcoders" / "config.json").exists()
        for n in tokens:
            for r in budgets:
                est = estimate(shape, root / "model" if built else None, root / "transcoders" if built else None, n, r)
                total = round(sum(est.values()), 2)
                cmd = f"python benchmarks/bench_scale.py --shapes {name} --tokens {n} --rows {r} --max-gb {total + 1:g}"
                line = f"{name} {n} tokens {r} rows: estimate {total} GB " + str(
                    {k: round(v, 2) for k, v in est.items()}
                )
                if a.estimate or total > a.max_gb:
                    print(("" if a.estimate else "skipped (over --max-gb): ") + line + f"\n    {cmd}", flush=True)
                    if not a.estimate:
                        done["skipped"] = [
                            s for s in done["skipped"] if (s["model"], s["tokens"], s["rows"]) != (name, n, r)
                        ]
                        done["skipped"].append(
                            {"model": name, "tokens": n, "rows": r, "estimate_gb": total, "command": cmd}
                        )
                    continue
                if not built:
                    t = time.time()
                    build(shape)
                    built = True
                    print(f"built {name} in {time.time() - t:.0f} s into {root}", flush=True)
                load0 = _load()
                p = subprocess.run(
                    [sys.executable, __file__, "--row", name, str(n), str(r)], capture_output=True, text=True
                )
                if p.returncode != 0:
                    print(f"{line}: FAILED\n{p.stderr[-2000:]}", flush=True)
                    continue
                row = json.loads(p.stdout.strip().splitlines()[-1])
                row.update(estimate_gb=total, load_1min=[load0, _load()])
                print(json.dumps(row), flush=True)
                done["rows"] = [x for x in done["rows"] if (x["model"], x["tokens"], x["rows"]) != (name, n, r)]
                done["rows"].append(row)
                done["skipped"] = [s for s in done["skipped"] if (s["model"], s["tokens"], s["rows"]) != (name, n, r)]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(done, indent=2) + "\n")
    if not a.estimate:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
