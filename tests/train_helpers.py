"""The tiny training run the transcoder tests share (per-layer and cross-layer): a few steps on the tiny models."""

from __future__ import annotations

from mechscope.training.train import TrainConfig


def tiny_train_cfg(tiny_dir, out, **kw) -> TrainConfig:
    """A TrainConfig for ~1,200 tokens of the tiny model's corpus; `kw` overrides any field."""
    base = dict(
        model=str(tiny_dir),
        corpus=str(tiny_dir / "corpus.txt"),
        tokens=1200,
        features=64,
        k=4,
        seq_len=32,
        batch_size=4,
        skip_init_tokens=300,
        out=str(out),
        save_dtype="float32",
        checkpoint_every=3,
        warmup_steps=2,
    )
    base.update(kw)
    return TrainConfig(**base)
