"""The knobs of `mechscope attend` / `qk_attribution`, importable without torch (the CLI builds its options from them
before any heavy import and refuses bad ones at once)."""

from __future__ import annotations

from dataclasses import dataclass

from mechscope.configs import param, require


@dataclass
class QKConfig:
    """Which head, query and key to explain, and how much to show.

    Without --layer/--head the head is chosen from the prompt's attribution graph (see
    `mechscope.attribution.qk_choice`); without --query the query is the last position (or the chosen edge's
    target); without --key the key is the one the head attends to most after BOS (or the chosen edge's source).
    Negative positions count from the end (-1 = last token).

    >>> QKConfig(layer=3)
    Traceback (most recent call last):
    mechscope.errors.MechscopeError: --layer and --head go together (give both, or neither to choose automatically)
    """

    layer: int | None = param(None, help="the head's layer (with --head; default: chosen from the attribution graph)")
    head: int | None = param(None, help="the head within its layer (query head; its key head is shared under GQA)")
    query: int | None = param(None, metavar="POS", help="query position (default: last token; negative from the end)")
    key: int | None = param(None, metavar="POS", help="key position (default: the most attended after BOS)")
    top: int = param(20, metavar="N", help="show the N largest pairs (and N nodes per side)")
    batch_size: int = param(128, cli=False, help="backward rows per pass (2 × head_dim rows in all)")

    def __post_init__(self) -> None:
        require(
            (self.layer is None) == (self.head is None),
            "--layer and --head go together (give both, or neither to choose automatically)",
        )
        require(self.layer is None or self.layer >= 0, f"--layer must be ≥ 0, got {self.layer}")
        require(self.head is None or self.head >= 0, f"--head must be ≥ 0, got {self.head}")
        require(self.top >= 1, f"--top must be ≥ 1, got {self.top}")
        require(self.batch_size >= 1, "the batch size must be ≥ 1")
