"""Transcoder sets read lazily from memory-mapped files: memory that scales with what a trace touches.

A set saved by `save_transcoders` (int8, bfloat16, float16 or float32) is opened without reading its weights: each
`.safetensors` file is mapped read-only (copy-on-write, so nothing is ever written back) and its tensors are views
of the mapping. Nothing is dequantized ahead of time; every computation runs in float32, one layer at a time:

    layer_pre_acts(l, x)   the encoder in chunks of `CHUNK` features: only a chunk is float32 at once
    enc_rows / dec_rows    the rows of the features asked for (the active ones), dequantized on demand
    enc_weights, dec_weights, ts[l]   a whole layer in float32, built on each call (for paths that want it)

The values equal an eagerly loaded set's bit for bit (the same per-row `q · scale` in float32), so a graph traced
with a mapped set matches one traced with `load_transcoders(..., mapped=False)` up to the order of float sums.
Pages of the files come in when first read and count towards the process's resident memory as file-backed pages
(the kernel can drop and re-read them under pressure); a trace reads every encoder and only the active features'
decoder rows.

>>> ts = load_transcoders("path/to/set", mapped=True)   # doctest: +SKIP
>>> ts.dec_rows(3, 3, torch.tensor([7, 42])).shape      # doctest: +SKIP
torch.Size([2, 2304])
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.errors import MechscopeError

#: features per encoder chunk: 4,096 × d float32 (37 MB at d = 2,304) is the most of an encoder held at once
CHUNK = 4096

_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I32": torch.int32,
    "I64": torch.int64,
    "F64": torch.float64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path: str | Path) -> tuple[dict, int]:
    """(the JSON header of a safetensors file, the offset where its data starts); one line on a bad file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise ValueError("shorter than its header length")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise MechscopeError(f"{path} is not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise MechscopeError(f"{path} is not a readable safetensors file: its header is not an object")
    return header, 8 + n


def map_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file as a view of one private read-only mapping of it (no copy, no read
    until a page is touched). The tensors keep the mapping alive."""
    return map_file(path)[0]


def map_file(path: str | Path) -> tuple[dict[str, Tensor], mmap.mmap | None]:
    """`map_safetensors`, and the mapping itself (for `release`)."""
    header, start = read_header(path)
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = _DTYPES[info["dtype"]]
            a, b = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise MechscopeError(f"{path}: tensor {name} has an unreadable header entry") from None
        count = (b - a) // dt.itemsize
        numel = 1
        for s in shape:
            numel *= s
        if count != numel or start + b > size:
            raise MechscopeError(f"{path}: tensor {name} does not fit the file (truncated?)")
        if count == 0 or mm is None:
            out[name] = torch.zeros(shape, dtype=dt)
            continue
        out[name] = torch.frombuffer(mm, dtype=dt, count=count, offset=start + a).view(shape)
    return out, mm


def release(mm: mmap.mmap | None) -> None:
    """Drop a mapping's pages from this process's resident memory (they stay in the page cache, and come back on
    the next read). Safe: the mapping is private and never written, so nothing is lost."""
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def write_safetensors(
    path: str | Path,
    specs: list[tuple[str, tuple[int, ...], torch.dtype]],
    chunks: Callable[[str], Iterable[Tensor]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor without holding them all: `specs` lists (name, shape, dtype) in
    file order, `chunks(name)` yields that tensor's contents in pieces along its first dimension. Readable by
    safetensors' own loader (the layout is the format's: 8-byte header length, JSON header padded to 8 bytes)."""
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    off = 0
    for name, shape, dt in specs:
        nbytes = dt.itemsize
        for s in shape:
            nbytes *= s
        header[name] = {"dtype": _NAMES[dt], "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, shape, dt in specs:
            written = 0
            for piece in chunks(name):
                piece = piece.to(dt).contiguous()
                fh.write(piece.reshape(-1).view(torch.uint8).numpy().tobytes())
                written += piece.numel()
            want = 1
            for s in shape:
                want *= s
            if written != want:
                raise ValueError(f"{name}: wrote {written} values, its shape {shape} holds {want}")


def _deq(t: Tensor, scale: Tensor | None) -> Tensor:
    """Stored rows → float32 exactly as `storage.dequantize_int8` computes them (`q.float() * scale.float()`)."""
    if scale is None:
        return t.float()
    return t.float() * scale.float().unsqueeze(-1)


class _Mapped:
    """What both mapped kinds share: the files' tensor views, per-layer dequantization, the source interface's
    encoder half and the graph-free conveniences callers use (`to`, `requires_grad_`, `cpu`)."""

    kind = "plt"
    mapped = True

    def __init__(self, meta: dict, enc: list[dict[str, Tensor]], maps: list | None = None) -> None:
        self.meta = meta
        self._enc = enc  # per read layer: W_enc (+ .scale), b_enc, threshold, b_dec, W_skip (+ .scale)
        self._maps = maps or [None] * len(enc)  # per read layer: the mapping of the file holding its encoder
        self._skip: dict[int, Tensor] = {}

    # ---- shape ---------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.meta["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self.meta["d_model"])

    @property
    def d_transcoder(self) -> int:
        return int(self.meta["d_transcoder"])

    def __len__(self) -> int:
        return self.n_layers

    # ---- no autograd state, no device but the CPU --------------------------------------------------------
    def requires_grad_(self, flag: bool = True):
        return self

    def eval(self):
        return self

    def cpu(self):
        return self

    def parameters(self) -> Iterator[Tensor]:
        return iter(t for d in self._enc for t in d.values())

    def to(self, device=None, *args, **kwargs):
        """The CPU keeps the mapping; another device gets the whole set loaded there (it must fit)."""
        if device is None or torch.device(device).type == "cpu":
            return self
        return self.materialize().to(device, *args, **kwargs)

    def materialize(self):
        raise NotImplementedError

    # ---- encoder ---------------------------------------------------------------------------------------
    def _f(self, l: int, key: str) -> Tensor | None:
        t = self._enc[l].get(key)
        return None if t is None else t.float()

    def layer_pre_acts(self, l: int, x: Tensor) -> Tensor:
        """x [..., d] -> [..., F], float32, the encoder dequantized `CHUNK` features at a time."""
        e = self._enc[l]
        W, s, b = e["W_enc"], e.get("W_enc.scale"), e["b_enc"]
        x = x.float()
        F_ = W.shape[0]
        if F_ <= CHUNK:
            return F.linear(x, _deq(W, s), b.float())
        out = x.new_empty(*x.shape[:-1], F_)
        for a in range(0, F_, CHUNK):
            z = min(a + CHUNK, F_)
            out[..., a:z] = F.linear(x, _deq(W[a:z], None if s is None else s[a:z]), b[a:z].float())
        return out

    def layer_activation(self, l: int, pre: Tensor) -> Tensor:
        act, k = self.meta["activation"], int(self.meta["k"])
        if act == "topk":
            vals, idx = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))
        if act == "jumprelu":
            theta = self._f(l, "threshold")
            return pre * (pre > (theta if theta is not None else 0.0))
        if act == "relu":
            return pre.clamp_min(0)
        raise ValueError(f"unknown activation {act}")

    def layer_encode(self, l: int, x: Tensor) -> Tensor:
        """Activations of layer l's features; the encoder's pages leave resident memory afterwards, so encoding
        every layer holds one layer's encoder at a time, not the set's."""
        acts = self.layer_activation(l, self.layer_pre_acts(l, x))
        release(self._maps[l])
        return acts

    def enc_weights(self, l: int) -> tuple[Tensor, Tensor]:
        """(W_enc [F, d], b_enc [F]) of layer l in float32, built on each call (prefer `enc_rows`)."""
        e = self._enc[l]
        return _deq(e["W_enc"], e.get("W_enc.scale")), e["b_enc"].float()

    def enc_rows(self, l: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(W_enc rows [k, d], b_enc [k]) of features `idx` read at l, float32."""
        e = self._enc[l]
        s = e.get("W_enc.scale")
        return _deq(e["W_enc"][idx], None if s is None else s[idx]), e["b_enc"][idx].float()

    # ---- skip and output bias ---------------------------------------------------------------------------
    def out_bias(self, w: int) -> Tensor:
        return self._enc[w]["b_dec"].float()

    def skip_weight(self, w: int) -> Tensor | None:
        """Layer w's W_skip [d, d] in float32, dequantized once and kept (d² floats a layer; the frozen runs read it
        on every pass)."""
        if "W_skip" not in self._enc[w]:
            return None
        if w not in self._skip:
            self._skip[w] = _deq(self._enc[w]["W_skip"], self._enc[w].get("W_skip.scale"))
        return self._skip[w]

    def layer_skip(self, w: int, x: Tensor) -> Tensor:
        W = self.skip_weight(w)
        if W is None:
            return torch.zeros_like(x)
        return x.to(W.dtype) @ W.T


class MappedTranscoderSet(_Mapped):
    """A per-layer set (`layer_{l}.safetensors`) read from memory-mapped files; the source interface of
    `TranscoderSet`, plus `enc_rows` / `dec_rows`. `ts[l]` builds layer l's `Transcoder` in float32."""

    kind = "plt"

    @property
    def cfg(self):
        from mechscope.transcoders.module import TranscoderConfig

        m = self.meta
        return TranscoderConfig(m["d_model"], m["d_transcoder"], m["activation"], m["k"], m["skip"])

    def __getitem__(self, l: int):
        from mechscope.transcoders.module import Transcoder

        if not -self.n_layers <= l < self.n_layers:
            raise IndexError(l)
        l %= self.n_layers
        tc = Transcoder(self.cfg)
        e = self._enc[l]
        with torch.no_grad():
            tc.W_enc.data, tc.b_enc.data = self.enc_weights(l)
            tc.W_dec.data = _deq(e["W_dec"], e.get("W_dec.scale"))
            tc.b_dec.data = e["b_dec"].float()
            if "threshold" in e:
                tc.threshold.data = e["threshold"].float()
            if tc.W_skip is not None:
                tc.W_skip.data = self.skip_weight(l).clone()
        return tc.requires_grad_(False)

    def __iter__(self):
        return (self[l] for l in range(self.n_layers))

    def write_layers(self, l: int) -> range:
        return range(l, l + 1)

    def dec_weights(self, l: int, w: int) -> Tensor:
        if w != l:
            raise IndexError(f"per-layer features of layer {l} write to layer {l} only, not {w}")
        e = self._enc[l]
        return _deq(e["W_dec"], e.get("W_dec.scale"))

    def dec_rows(self, l: int, w: int, idx: Tensor) -> Tensor:
        """Decoder rows [k, d] of features `idx` read at l into layer w, float32."""
        if w != l:
            raise IndexError(f"per-layer features of layer {l} write to layer {l} only, not {w}")
        e = self._enc[l]
        s = e.get("W_dec.scale")
        return _deq(e["W_dec"][idx], None if s is None else s[idx])

    def materialize(self):
        from mechscope.transcoders.module import TranscoderSet

        return TranscoderSet(list(self), self.meta)


class MappedCLT(_Mapped):
    """A cross-layer transcoder (`enc_{l}` / `dec_{l}.safetensors`) read from memory-mapped files."""

    kind = "clt"

    def __init__(
        self, meta: dict, enc: list[dict[str, Tensor]], dec: list[dict[str, Tensor]], maps: list | None = None
    ) -> None:
        super().__init__(meta, enc, maps)
        self._dec = dec  # per read layer: W_dec [F, n_write, d] (+ .scale [F, n_write])

    @property
    def cfg(self):
        from mechscope.transcoders.clt import CLTConfig

        m = self.meta
        return CLTConfig(
            m["n_layers"], m["d_model"], m["d_transcoder"], m["activation"], m["k"], m["skip"], m["max_write_layers"]
        )

    def __getitem__(self, i: int):
        raise MechscopeError(
            "this is a cross-layer transcoder: its features write to several layers, so it has no per-layer "
            "transcoder `ts[l]` (this code path supports per-layer transcoder sets only)"
        )

    def write_layers(self, l: int) -> range:
        return range(l, l + self.cfg.n_write(l))

    def _check(self, l: int, w: int) -> None:
        if w not in self.write_layers(l):
            raise IndexError(f"features read at layer {l} do not write to layer {w}")

    def dec_weights(self, l: int, w: int) -> Tensor:
        self._check(l, w)
        d = self._dec[l]
        s = d.get("W_dec.scale")
        return _deq(d["W_dec"][:, w - l], None if s is None else s[:, w - l])

    def dec_rows(self, l: int, w: int, idx: Tensor) -> Tensor:
        self._check(l, w)
        d = self._dec[l]
        s = d.get("W_dec.scale")
        return _deq(d["W_dec"][idx, w - l], None if s is None else s[idx, w - l])

    def materialize(self):
        from mechscope.transcoders.clt import CrossLayerTranscoder

        clt = CrossLayerTranscoder(self.cfg, self.meta)
        with torch.no_grad():
            for l in range(self.n_layers):
                W, b = self.enc_weights(l)
                clt.W_enc.data[l], clt.b_enc.data[l], clt.b_dec.data[l] = W, b, self.out_bias(l)
                if "threshold" in self._enc[l]:
                    clt.threshold.data[l] = self._enc[l]["threshold"].float()
                if clt.W_skip is not None:
                    clt.W_skip.data[l] = self.skip_weight(l)
                d = self._dec[l]
                clt.W_dec[l].data = _deq(d["W_dec"], d.get("W_dec.scale"))
        return clt.requires_grad_(False)


def in_memory(ts):
    """The set itself, or, for a memory-mapped one, the whole set loaded in float32: for code that edits weights
    in place or writes them all (a mapped set's `ts[l]` and `dec_weights` are fresh copies)."""
    return ts.materialize() if getattr(ts, "mapped", False) else ts


# ---- loading ------------------------------------------------------------------------------------------------
_PLT_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _shape_check(f: Path, tensors: dict[str, Tensor], want: dict[str, tuple[int, ...]]) -> None:
    for key, shape in want.items():
        if key not in tensors:
            raise MechscopeError(f"{f} lacks tensor {key}")
        if tuple(tensors[key].shape) != shape:
            raise MechscopeError(f"{f}: {key} has shape {tuple(tensors[key].shape)}, expected {shape}")
        if tensors[key].dtype == torch.int8:
            sc = tensors.get(f"{key}.scale")
            if sc is None or tuple(sc.shape) != shape[:-1]:
                raise MechscopeError(f"int8 tensor {key} has no matching {key}.scale")


def load_mapped(path: Path, meta: dict, verify: bool = True) -> MappedTranscoderSet | MappedCLT:
    """Open a set (config.json already read and checked) without reading its weights; `verify` checks every file's
    SHA-256 once per file version (see `verified`)."""
    L, d, F_ = meta["n_layers"], meta["d_model"], meta["d_transcoder"]
    clt = meta.get("kind", "plt") == "clt"
    if clt:
        mw = meta.get("max_write_layers", 0)
        if not isinstance(mw, int) or isinstance(mw, bool) or mw < 0:
            raise MechscopeError(f"{path}/config.json: max_write_layers must be an integer ≥ 0 (got {mw!r})")
        meta.setdefault("max_write_layers", 0)
    enc, dec, mms = [], [], []
    for l in range(L):
        names = [f"enc_{l}.safetensors", f"dec_{l}.safetensors"] if clt else [f"layer_{l}.safetensors"]
        maps = []
        for name in names:
            f = path / name
            if not f.exists():
                raise MechscopeError(
                    f"{'cross-layer transcoder' if clt else 'transcoder set'} {path} is missing {name}"
                )
            if verify:
                verified(f, meta["files"].get(name))
            tensors, mm = map_file(f)
            maps.append(tensors)
            if len(maps) == 1:
                mms.append(mm)
        want = {"W_enc": (F_, d), "b_enc": (F_,), "b_dec": (d,)}
        if meta["skip"]:
            want["W_skip"] = (d, d)
        elif "W_skip" in maps[0]:
            raise MechscopeError(f"{path / names[0]} has W_skip but its config says skip=False")
        if clt:
            n_write = L - l if meta["max_write_layers"] <= 0 else min(L - l, meta["max_write_layers"])
            _shape_check(path / names[0], maps[0], want)
            _shape_check(path / names[1], maps[1], {"W_dec": (F_, n_write, d)})
            dec.append(maps[1])
        else:
            want["W_dec"] = (F_, d)
            _shape_check(path / names[0], maps[0], want)
        enc.append(maps[0])
    return MappedCLT(meta, enc, dec, mms) if clt else MappedTranscoderSet(meta, enc, mms)


def verified(f: Path, sha: str | None) -> None:
    """Check `f` against its SHA-256, once per version of the file: a stamp in the cache (size, mtime, digest)
    spares a multi-GB set the minute of hashing on every load; a file touched since is hashed again."""
    from mechscope.paths import cache_dir, file_sha256

    st = f.stat()
    stamp_dir = cache_dir() / "verified"
    import hashlib

    stamp = stamp_dir / (hashlib.sha256(str(f.resolve()).encode()).hexdigest()[:32] + ".json")
    want = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    try:
        if json.loads(stamp.read_text()) == want:
            return
    except (OSError, ValueError):
        pass
    if file_sha256(f) != sha:
        raise MechscopeError(f"{f} does not match its SHA-256 in config.json (truncated or altered)")
    try:
        stamp_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(want))
    except OSError:
        pass  # a read-only cache only costs the hashing next time


def stored_bytes(path: Path, meta: dict) -> dict[str, int]:
    """Bytes on disk of a set's encoder half (encoders, biases, thresholds, skip) and decoder half, from the
    files' headers alone."""
    enc = dec = 0
    for name in meta.get("files", {}):
        f = path / name
        try:
            header, _ = read_header(f)
        except MechscopeError:
            continue
        for key, info in header.items():
            if key == "__metadata__":
                continue
            a, b = info["data_offsets"]
            if key.startswith("W_dec"):
                dec += b - a
            else:
                enc += b - a
    return {"enc": enc, "dec": dec}
