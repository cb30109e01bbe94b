"""A full-budget training run on a lent GPU: both models' sets in one device command, with everything it needs
carried over in pieces and the trained sets brought back in pieces.

The device tool copies this checkout to a machine with a GPU and runs one bash command there (10 minutes at most);
a call carries at most 64 MiB of files, working tree included, and brings back at most 8 files of 16 MiB from
$OUT. So, in steps (`python -m mechscope.training.remote STEP --help` for each):

1. ``pack`` (here): for each model, its GGUF file and converted tokenizer, the training text exported from its
   corpus, optionally a set to start from, and the gguf package the device lacks, tarred into pieces of at most
   48 MiB under .remote/pieces, with .remote/manifest.json (SHA-256 of every piece and file, and of every weight
   tensor as converted here). ``plan`` prints the device calls.
2. ``receive`` (device, one call per piece, carrying it): says which pieces are there; ignored files stay on a
   warm machine between calls.
3. ``run`` (device, the call carrying the last piece): reassembles and checks the pieces, converts each GGUF as
   `mechscope` does and checks the weights against this machine's digest, measures the training speed for a few
   steps, sizes each model's token budget to its share of --seconds, trains (`train_transcoders`, --time-limit as a
   safety net: a set cut short is saved as a candidate that --continue-from continues), and writes the sets (int8)
   into $OUT in pieces of at most 15 MiB with results.json; ``emit`` (later calls) writes the rest.
4. ``unpack`` (here): gathers the pieces from the calls' returned folders, checks them and every set's files.

>>> PRESETS["gemma3-270m"]["features"], PRESETS["smollm2-135m"]["k"]
(2048, 64)
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import sys
from dataclasses import fields
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.training.config import TrainConfig
from mechscope.training.pieces import MIB, read_pieces, write_pieces

log = logging.getLogger(__name__)

FORMAT = "mechscope-remote"
DEFAULT_DIR = Path(".remote")
PIECE_IN_MIB = 48  # a call carries at most 64 MiB with the working tree (a checkout without the shipped sets)
PIECE_OUT_MIB = 15  # files back from $OUT: 16 MiB each at most
OUT_FILES, OUT_MIB = 8, 60  # files and MiB back from one call

#: each model's training on the GPU: the shipped sets' shape, bigger batches for the GPU, the activation cache
_GPU_COMMON = dict(
    batch_size=32,
    skip_init_tokens=65536,
    resample_dead=True,
    resample_scale=1.5,
    dead_after_tokens=1_000_000,
    checkpoint_every=200,
    cache_gb=8.0,
    cache_epochs=2,
)
PRESETS: dict[str, dict] = {
    "gemma3-270m": dict(corpus="builtin,lens:gemma3-270m*4", features=2048, k=32, **_GPU_COMMON),
    "smollm2-135m": dict(corpus="builtin,lens:smollm2-135m*4", features=1280, k=64, outlier_factor=50.0, **_GPU_COMMON),
}


def parse_options(models: list[str], options: list[str]) -> dict[str, dict]:
    """Each model's TrainConfig fields: its preset (if any) with `MODEL:FIELD=VALUE` overrides, each validated as
    TrainConfig validates it (one line for a bad one).

    >>> parse_options(["gemma3-270m"], ["gemma3-270m:k=64"])["gemma3-270m"]["k"]
    64
    """
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {m: dict(PRESETS.get(Path(m).name if Path(m).is_dir() else m, {})) for m in models}
    for opt in options:
        model, _, kv = opt.partition(":")
        key, eq, value = kv.partition("=")
        if model not in out or not eq or key not in types:
            raise MechscopeError(f"--option {opt!r}: expected MODEL:FIELD=VALUE with MODEL one of {', '.join(out)}")
        kind = str(types[key])
        if "bool" in kind:
            out[model][key] = value.lower() in ("1", "true", "yes")
        elif "int" in kind:
            out[model][key] = int(value)
        elif "float" in kind:
            out[model][key] = float(value)
        else:
            out[model][key] = value
    for m, kw in out.items():
        TrainConfig(model=m, **kw)  # validated now, not on the device
    return out


def _key(model: str) -> str:
    return Path(model).name if Path(model).is_dir() else model


def export_corpus(spec: str, model: str, dest: Path) -> int:
    """The training split of `spec` as JSON lines at `dest` (ids chosen so no document falls into the held-out
    split again) and an xz copy beside it to carry; returns its tokens under the model's tokenizer."""
    from mechscope.corpus.offline_text import is_heldout
    from mechscope.corpus.sources import iter_documents
    from mechscope.models.tokenizer import load_tokenizer

    from mechscope.models.registry import MODELS

    tok = load_tokenizer(_tokenizer_dir(model), fast=model in MODELS, local_files_only=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    n_tokens = 0
    with dest.open("w", encoding="utf-8") as f:
        for i, text in enumerate(iter_documents(spec, "train")):
            doc_id, j = str(i), 0
            while is_heldout(doc_id):
                j += 1
                doc_id = f"{i}.{j}"
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
            n_tokens += len(tok(text, add_special_tokens=False)["input_ids"])
    with dest.open("rb") as src, lzma.open(dest.with_suffix(".jsonl.xz"), "wb", preset=6) as xz:
        while chunk := src.read(MIB):
            xz.write(chunk)
    return n_tokens


def _tokenizer_dir(model: str) -> str:
    from mechscope.models.loading import ensure_converted
    from mechscope.models.registry import MODELS

    return str(ensure_converted(model)) if model in MODELS else model


def pack(
    models: list[str],
    options: list[str] | None = None,
    root: Path = DEFAULT_DIR,
    init_from: dict[str, str] | None = None,
    piece_mib: float = PIECE_IN_MIB,
) -> dict:
    """Step 1 (see the module): the payload's pieces and manifest under `root`; returns the manifest."""
    from mechscope.training.remote_model import payload_files, site_files

    opts = parse_options(models, options or [])
    files: dict[str, Path] = {}
    entries = {}
    for model in models:
        key = _key(model)
        mfiles, entry = payload_files(model)
        files |= mfiles
        kw = opts[model]
        corpus = root / "work" / key / "corpus.jsonl"
        entry["corpus_tokens"] = export_corpus(kw.pop("corpus", "builtin"), model, corpus)
        files[f"{key}/corpus.jsonl.xz"] = corpus.with_suffix(".jsonl.xz")
        if init_from and model in init_from:
            src = Path(init_from[model])
            files |= {f"{key}/init/{p.name}": p for p in sorted(src.iterdir()) if p.is_file()}
            kw["init_from"] = f"{key}/init"
        entries[key] = {**entry, "model": model if entry["kind"] == "gguf" else None, "train": kw}
        if entry["kind"] == "gguf":
            files |= site_files("gguf")
    payload = write_pieces(files, root / "pieces", "payload", int(piece_mib * MIB))
    manifest = {"format": FORMAT, "version": 1, "models": entries, "payload": payload}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def plan(root: Path = DEFAULT_DIR, seconds: int = 480) -> list[dict]:
    """The device calls of steps 2 and 3 for the packed payload: what each carries and runs."""
    m = json.loads((root / "manifest.json").read_text())
    pieces = [p["name"] for p in m["payload"]["pieces"]]
    mod = "python3 -m mechscope.training.remote"
    calls = [
        {"carry": [str(root / "manifest.json"), str(root / "pieces" / p)], "command": f"{mod} receive --dir {root}"}
        for p in pieces[:-1]
    ]
    run = f"PYTHONUNBUFFERED=1 {mod} run --dir {root} --seconds {seconds} --out $OUT 2>&1 | tee $OUT/run.log"
    calls.append({"carry": [str(root / "manifest.json"), str(root / "pieces" / pieces[-1])], "command": run})
    return calls


def unpack(sources: list[Path], dest: Path, root: Path = DEFAULT_DIR) -> dict:
    """Step 4: the result pieces gathered from the returned folders into root/back, checked, untarred into `dest`;
    every set's layer files checked against its config.json. Returns the device's results.json."""
    import shutil

    from mechscope.transcoders.storage import load_transcoders

    results = None
    back = root / "back"
    back.mkdir(parents=True, exist_ok=True)
    for src in sources:
        if (src / "results.json").exists():
            results = json.loads((src / "results.json").read_text())
        for p in src.glob("result.*"):
            shutil.copy2(p, back / p.name)
    if results is None:
        raise MechscopeError(f"no results.json in {', '.join(map(str, sources))}: give the run call's folder too")
    read_pieces(results["pieces"], back, dest)
    for key, r in results["models"].items():
        if r.get("set"):
            load_transcoders(dest / r["set"])  # SHA-256 of every layer file
    return results


def main(argv: list[str] | None = None) -> int:
    from mechscope.training import remote_run

    ap = argparse.ArgumentParser(prog="python -m mechscope.training.remote", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pack", help="here: the payload's pieces and manifest")
    p.add_argument("--models", default="gemma3-270m,smollm2-135m")
    p.add_argument("--option", action="append", default=[], help="MODEL:FIELD=VALUE, a TrainConfig field")
    p.add_argument("--init-from", action="append", default=[], help="MODEL=DIR: start that model from a saved set")
    p.add_argument("--piece-mib", type=float, default=PIECE_IN_MIB)
    p.add_argument("--seconds", type=int, default=480, help="training time for all models together (the plan)")
    for name, helptext in (
        ("receive", "device: which pieces are there"),
        ("run", "device: reassemble, convert, train, emit the first results"),
        ("emit", "device: the next results"),
        ("unpack", "here: gather and check the results"),
        ("plan", "here: the device calls"),
    ):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--seconds", type=int, default=480)
        q.add_argument("--out", default="", help="run/emit: $OUT; unpack: where the sets go")
        q.add_argument("--batch", type=int, default=1, help="emit: which batch of result pieces (0 went with run)")
        q.add_argument("--device", default="cuda")
        q.add_argument("--from", dest="sources", action="append", default=[], help="unpack: a returned folder")
    for q in sub.choices.values():
        q.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    a = ap.parse_args(argv)
    try:
        if a.step == "pack":
            init = dict(x.split("=", 1) for x in a.init_from)
            pack(a.models.split(","), a.option, a.dir, init, a.piece_mib)
            a.step = "plan"
        if a.step == "plan":
            for i, call in enumerate(plan(a.dir, a.seconds), 1):
                print(json.dumps({"call": i, **call}))
        elif a.step == "receive":
            print(remote_run.receive(a.dir))
        elif a.step == "run":
            remote_run.run(a.dir, Path(a.out), a.seconds, a.device)
        elif a.step == "emit":
            print(remote_run.emit(a.dir, Path(a.out), a.batch))
        elif a.step == "unpack":
            res = unpack([Path(s) for s in a.sources], Path(a.out or "runs/remote"), a.dir)
            print(json.dumps({k: v.get("summary", v) for k, v in res["models"].items()}))
    except MechscopeError as e:
        print(f"mechscope: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
