"""The device's side of a remote run (see `remote`): which pieces have arrived, the run itself, and the result
pieces written into $OUT a call's worth at a time.

>>> batches([{"name": "result.000", "size": 15 * 2**20}] * 9)  # 4 pieces of 15 MiB per call
[[0, 1, 2, 3], [4, 5, 6, 7], [8]]
"""

from __future__ import annotations

import gc
import json
import logging
import lzma
import os
import shutil
import sys
import time
from pathlib import Path

from mechscope.errors import MechscopeError
from mechscope.training.pieces import MIB, missing, read_pieces, write_pieces
from mechscope.training.remote import OUT_FILES, OUT_MIB, PIECE_OUT_MIB

log = logging.getLogger(__name__)

#: steps of the short run that measures the training speed before the budget is set
CALIBRATION_STEPS = 30


def _manifest(root: Path) -> dict:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        raise MechscopeError(f"{root}/manifest.json is missing or unreadable: carry it with every call") from None


def receive(root: Path) -> str:
    """One line: how many of the payload's pieces are here, and which are still missing or damaged."""
    m = _manifest(root)["payload"]
    bad = missing(m, root / "pieces")
    n = len(m["pieces"])
    return f"{n - len(bad)} of {n} pieces here" + (f"; missing: {', '.join(bad)}" if bad else "; ready to run")


def _extract(root: Path) -> Path:
    """The payload, checked and untarred into root/work once (a marker keeps a second call from doing it again)."""
    man = _manifest(root)
    work = root / "work"
    done = work / ".payload-complete"
    stamp = json.dumps([p["sha256"] for p in man["payload"]["pieces"]])
    if not (done.exists() and done.read_text() == stamp):
        read_pieces(man["payload"], root / "pieces", work)
        for xz in work.glob("*/corpus.jsonl.xz"):
            with lzma.open(xz) as src, xz.with_suffix("").open("wb") as dst:
                shutil.copyfileobj(src, dst, MIB)
        done.write_text(stamp)
    return work


def _environment(root: Path, work: Path) -> None:
    """The carried gguf package importable (before transformers looks for it) and the converted models kept under
    root/cache, for this process and the ones it starts."""
    site = str((work / "site").resolve())
    if (work / "site").exists() and site not in sys.path:
        sys.path.insert(0, site)
        os.environ["PYTHONPATH"] = site + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ.setdefault("MECHSCOPE_CACHE", str((root / "cache").resolve()))


def _budget(cfg_kw: dict, rate: float, seconds: float, corpus_tokens: int) -> tuple[int, int]:
    """(tokens to train, times the text is repeated) for `seconds` at `rate` tokens/s: 85% of the time, so the run
    ends on its schedule before --time-limit would cut it."""
    tokens = max(1, int(rate * seconds * 0.85))
    distinct = tokens / max(1, cfg_kw.get("cache_epochs", 1))
    repeats = max(1, -(-int(distinct * 1.1) // max(1, corpus_tokens)))
    return tokens, repeats


def _train_one(root: Path, work: Path, key: str, entry: dict, seconds: float, device: str) -> dict:
    from mechscope.training.config import TrainConfig
    from mechscope.training.remote_model import install
    from mechscope.training.train import train_transcoders

    t0 = time.time()
    model = install(entry.get("model") or key, entry, work)
    kw = dict(entry["train"])
    if kw.get("init_from"):
        kw["init_from"] = str(work / kw["init_from"])
    corpus = str(work / key / "corpus.jsonl")
    base = dict(kw, model=model, device=device, save_dtype="int8")
    res: dict = {"convert_s": round(time.time() - t0, 1)}
    if "tokens" not in kw:  # measure the speed, then size the budget to what is left of this model's share
        probe = dict(base, corpus=corpus, checkpoint_every=0, resample_dead=False, density_cap=0.0)
        probe.update(cache_gb=0.0, cache_epochs=1, out=str(root / "calibration" / key))
        probe["tokens"] = CALIBRATION_STEPS * kw.get("batch_size", 8) * (kw.get("seq_len", 128) - 1)
        rate = train_transcoders(TrainConfig(**probe), progress=False)["tokens_per_s"]
        left = seconds - (time.time() - t0)
        base["tokens"], repeats = _budget(kw, rate, left, entry["corpus_tokens"])
        res.update(calibrated_tokens_per_s=rate, repeats=repeats)
        corpus = f"{corpus}*{repeats}" if repeats > 1 else corpus
    out = root / "results" / key
    left = seconds - (time.time() - t0)
    cfg = TrainConfig(**dict(base, corpus=corpus, out=str(out), time_limit_s=max(30.0, left)))
    res["summary"] = train_transcoders(cfg, progress=False)
    res["set"] = key
    return res


def run(root: Path, out: Path, seconds: float, device: str = "cuda", piece_mib: float = PIECE_OUT_MIB) -> dict:
    """Step 3 (see `remote`): every model trained in its share of `seconds`, the results' first pieces (of at most
    `piece_mib` MiB) in `out`."""
    t0 = time.time()
    work = _extract(root)
    _environment(root, work)
    man = _manifest(root)
    results: dict = {"models": {}, "device": device}
    keys = list(man["models"])
    for i, key in enumerate(keys):
        share = (seconds - (time.time() - t0)) / (len(keys) - i)
        try:
            results["models"][key] = _train_one(root, work, key, man["models"][key], share, device)
        except MechscopeError as e:  # the other model still gets its turn; the failure comes back in results.json
            results["models"][key] = {"error": str(e)}
            log.error("%s: %s", key, e)
        gc.collect()
        _free_gpu()
    results["elapsed_s"] = round(time.time() - t0, 1)
    files = {
        f"{key}/{p.name}": p
        for key in keys
        if (root / "results" / key).is_dir()
        for p in (root / "results" / key).iterdir()
    }
    results["pieces"] = write_pieces(files, root / "back", "result", int(piece_mib * MIB))
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print(emit(root, out, 0))
    return results


def _free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batches(pieces: list[dict]) -> list[list[int]]:
    """Result pieces grouped per call: at most OUT_FILES − 2 of them (results.json and run.log come back too) and
    OUT_MIB MiB."""
    out: list[list[int]] = [[]]
    size = 0
    for i, p in enumerate(pieces):
        if out[-1] and (len(out[-1]) >= OUT_FILES - 2 or size + p["size"] > OUT_MIB * MIB):
            out.append([])
            size = 0
        out[-1].append(i)
        size += p["size"]
    return out


def emit(root: Path, out: Path, batch: int) -> str:
    """Write batch `batch` of the result pieces and results.json into `out` ($OUT); one line says what is left."""
    try:
        results = json.loads((root / "results.json").read_text())
    except (OSError, ValueError):
        raise MechscopeError(f"no results in {root}: the run call has not finished on this machine") from None
    groups = batches(results["pieces"]["pieces"])
    if not 0 <= batch < len(groups):
        raise MechscopeError(f"--batch {batch}: the results come in batches 0..{len(groups) - 1}")
    out.mkdir(parents=True, exist_ok=True)
    for i in groups[batch]:
        name = results["pieces"]["pieces"][i]["name"]
        shutil.copy2(root / "back" / name, out / name)
    shutil.copy2(root / "results.json", out / "results.json")
    rest = len(groups) - 1 - batch
    return f"wrote result batch {batch} ({len(groups[batch])} pieces) to {out}" + (
        f"; {rest} more: emit --batch {batch + 1}" if rest else "; that was the last"
    )
