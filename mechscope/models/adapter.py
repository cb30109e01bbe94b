"""A thin adapter over Hugging Face causal LMs: named sites, hooks, frozen norms and attention.

Everything in mechscope talks to `ModelAdapter`, never to a model's modules directly. A family
(Llama, Gemma 2/3, Qwen3, GPT-2) is described by a `Family` record in families.py: module names, the
residual-stream norms and how they scale, whether it has a post-MLP norm or other biases.

Site names follow TransformerLens: `blocks.{l}.hook_resid_pre`, `hook_resid_mid`, `hook_mlp_in`,
`hook_mlp_out` (for Gemma: after the post-feedforward norm), `hook_mlp_out_raw` (before it),
`hook_resid_post`, plus `hook_embed` and `ln_final.hook_normalized`.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from mechscope.errors import MechscopeError
from mechscope.models.attention import ATTN, Captured
from mechscope.models.families import FAMILIES, Family, family_for  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------
@dataclass
class Tokens:
    """A tokenized prompt.  ids: [n_pos]"""

    ids: Tensor
    strs: list[str] = field(default_factory=list)


class ModelAdapter:
    """Uniform access to a causal LM's internals.

    Example:
        >>> from mechscope import load_model
        >>> m = load_model("gemma3-270m")
        >>> cache = m.run_with_cache(m.tokenize("Dallas is in the state of").ids[None], ["blocks.3.hook_mlp_in"])
        >>> cache["blocks.3.hook_mlp_in"].shape   # [1, n_pos, d_model]
        torch.Size([1, 7, 640])
    """

    def __init__(self, model: nn.Module, tokenizer, name: str = "custom") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        self.cfg = getattr(cfg, "text_config", cfg)
        self.family = family_for(self.cfg.model_type)
        self.base = getattr(model, self.family.base)  # decoder stack without the unembedding
        self.layers: list[nn.Module] = list(getattr(self.base, self.family.layers))
        self.n_layers = len(self.layers)
        self.d_model = int(self.cfg.hidden_size)
        self.d_mlp = self.family.d_mlp(self.cfg)
        self.vocab_size = int(self.cfg.vocab_size)
        self.max_context = int(getattr(self.cfg, "max_position_embeddings", 2048))
        self.final_softcap = getattr(self.cfg, "final_logit_softcapping", None)
        self._mean_u: tuple[tuple, Tensor] | None = None  # see W_U_mean
        if model.config._attn_implementation != "mechscope":
            model.set_attn_implementation("mechscope")

    # ---- identity -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def W_U(self) -> Tensor:
        """Unembedding, [vocab, d_model] (rows are token directions)."""
        return self.model.lm_head.weight

    @property
    def W_U_mean(self) -> Tensor:
        """Mean token direction [d_model], float32: what a centred logit subtracts.

        Cached, because the mean over Gemma's 262k rows costs ~0.1 s, paid by every trace of a long-lived session
        (the page); keyed on the weight's storage and version, so replaced or edited weights are averaged again.
        """
        W = self.W_U
        key = (W.data_ptr(), W._version, W.dtype, W.device)
        if self._mean_u is None or self._mean_u[0] != key:
            self._mean_u = (key, W.float().mean(0))
        return self._mean_u[1]

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self.base, self.family.final_norm)

    def mlp(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.mlp)

    def mlp_out_module(self, layer: int) -> nn.Module:
        """The module whose output is `hook_mlp_out` (what transcoders predict)."""
        post = self.family.post_mlp_norm
        return getattr(self.layers[layer], post) if post else self.mlp(layer)

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        return getattr(self.layers[layer], self.family.pre_mlp_norm)

    def hf_path(self, site: str) -> str:
        """Map a TransformerLens-style site to the Hugging Face module path (and which end of it)."""
        mod, end = self._site(site)
        for name, m in self.model.named_modules():
            if m is mod:
                return f"{name}:{end}"
        raise KeyError(site)

    # ---- text -----------------------------------------------------------------------------
    def tokenize(self, prompt: str, chat: bool = False) -> Tokens:
        """Tokenize with the model's own conventions (Gemma prepends <bos>; chat applies the template)."""
        if not prompt or not prompt.strip():
            raise MechscopeError("empty prompt")
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise MechscopeError(f"model {self.name} has no chat template; run without --chat")
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if len(ids) > self.max_context:
            raise MechscopeError(f"prompt has {len(ids)} tokens; {self.name} allows at most {self.max_context}")
        t = torch.tensor(ids, dtype=torch.long)
        return Tokens(t, [self.tokenizer.decode([i]) for i in ids])

    def token_id(self, token: str) -> int:
        """The vocabulary id of a string that must be exactly one token (e.g. ' Texas')."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise MechscopeError(
                f"target {token!r} is not a single token of {self.name} "
                f"(it splits into {[self.tokenizer.decode([i]) for i in ids]})"
            )
        return ids[0]

    # ---- sites and hooks ------------------------------------------------------------------
    def _site(self, site: str) -> tuple[nn.Module, str]:
        if site == "hook_embed":
            return getattr(self.base, self.family.embed), "out"
        if site == "ln_final.hook_normalized":
            return self.final_norm, "out"
        try:
            _, l, hook = site.split(".")
            layer = int(l)
            blk = self.layers[layer]
        except (ValueError, IndexError):
            raise MechscopeError(f"unknown site '{site}'") from None
        table = {
            "hook_resid_pre": (blk, "in"),
            "hook_resid_post": (blk, "out"),
            "hook_resid_mid": (self.pre_mlp_norm(layer), "in"),
            "hook_mlp_in": (self.mlp(layer), "in"),
            "hook_mlp_out_raw": (self.mlp(layer), "out"),
            "hook_mlp_out": (self.mlp_out_module(layer), "out"),
        }
        if hook not in table:
            raise MechscopeError(f"unknown site '{site}'; hooks: {', '.join(table)}")
        return table[hook]

    @contextlib.contextmanager
    def hooks(self, fns: dict[str, Callable[[Tensor], Tensor | None]]) -> Iterator[None]:
        """Attach functions to sites; a function may return a replacement tensor."""
        handles = []
        try:
            for site, fn in fns.items():
                mod, end = self._site(site)
                if end == "in":

                    def pre(m, args, kwargs, fn=fn):
                        x = args[0] if args else kwargs["hidden_states"]
                        y = fn(x)
                        if y is None:
                            return None
                        if args:
                            return (y, *args[1:]), kwargs
                        return args, {**kwargs, "hidden_states": y}

                    handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
                else:

                    def post(m, args, out, fn=fn):
                        x = out[0] if isinstance(out, tuple) else out
                        y = fn(x)
                        if y is None:
                            return None
                        return (y, *out[1:]) if isinstance(out, tuple) else y

                    handles.append(mod.register_forward_hook(post))
            yield
        finally:
            for h in handles:
                h.remove()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, logits: bool = True) -> Tensor:
        """input_ids: [b, n] -> logits [b, n, vocab] (or the final-normed residual [b, n, d] if not logits)."""
        if logits:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def forward_cached(self, input_ids: Tensor, cache=None, last_only: bool = True) -> tuple[Tensor, object]:
        """One forward that reads and extends a KV cache (Hugging Face's own, `DynamicCache`): input_ids [b, n]
        are the positions after those already cached (cache None: a new one is made and filled). Returns
        (logits [b, 1 or n, vocab], the cache). Hooks see only the n new positions; `last_only` skips the
        unembedding of the others (on Gemma it reads a 262k × d matrix per position).

        >>> logits, cache = m.forward_cached(m.tokenize("Dallas is in the state of").ids[None])
        >>> logits, cache = m.forward_cached(logits[:, -1].argmax(-1, keepdim=True), cache)   # the next position
        """
        res = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        return res.logits, res.cache

    def run_with_cache(
        self,
        input_ids: Tensor,
        sites: list[str],
        attention_mask: Tensor | None = None,
        logits: bool = True,
        detach: bool = True,
    ) -> dict[str, Tensor]:
        """One forward pass; returns {site: tensor [b, n, d]} plus 'logits' when asked."""
        cache: dict[str, Tensor] = {}

        def saver(site: str):
            def fn(x: Tensor) -> None:
                cache[site] = x.detach() if detach else x

            return fn

        with self.hooks({s: saver(s) for s in sites}):
            out = self.forward(input_ids, attention_mask, logits=logits)
        if logits:
            cache["logits"] = out
        return cache

    # ---- frozen pieces for the local replacement model --------------------------------------
    def norm_modules(self) -> list[nn.Module]:
        """The residual-stream norms (named by the family, not found by class) and the final norm."""
        return [getattr(blk, n) for blk in self.layers for n in self.family.residual_norms] + [self.final_norm]

    @contextlib.contextmanager
    def frozen(
        self, attention: bool = True, norms: bool = True, scales: dict[str, Tensor] | None = None
    ) -> Iterator[None]:
        """Detach attention patterns and norm scales: the rest of the model becomes linear in the residual.

        With `scales` (from `record_norm_scales` on a clean run) the norms use those values instead of the
        current input's, so perturbed forward passes stay in the same linear model. Scales are sliced to the
        current length (position is dim -2), so a prefix of the prompt can be run.
        """
        handles = []
        fam = self.family
        names = {m: n for n, m in self.model.named_modules()}

        def frozen_norm(m, args, out):
            x = args[0]
            if scales is not None:
                sc = scales[names[m]]
                sc = sc[..., : x.shape[-2], :]
            else:
                sc = fam.norm_scale(x, fam.norm_eps(m))
            return fam.frozen_norm(m, x, sc)

        prev = ATTN.freeze
        try:
            if norms:
                handles = [m.register_forward_hook(frozen_norm) for m in self.norm_modules()]
            ATTN.freeze = attention or prev
            yield
        finally:
            ATTN.freeze = prev
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def record_norm_scales(self, store: dict[str, Tensor]) -> Iterator[None]:
        """Record 1/rms (1/std for LayerNorm) of every norm's input ({module path: [b, ..., n, 1]}) during the enclosed forward."""
        handles = []
        names = {m: n for n, m in self.model.named_modules()}
        for m in self.norm_modules():

            def fn(mod, args, res, key=names[m]):
                store[key] = self.family.norm_scale(args[0], self.family.norm_eps(mod)).detach()

            handles.append(m.register_forward_hook(fn))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def attention_patterns(
        self, record: dict[int, Tensor] | None = None, override: dict[int, Tensor] | None = None
    ) -> Iterator[None]:
        """Record patterns ({layer: [b, heads, q, k]}) or force those of another run."""
        prev = (ATTN.record, ATTN.override)
        ATTN.record, ATTN.override = record, override
        try:
            yield
        finally:
            ATTN.record, ATTN.override = prev

    @contextlib.contextmanager
    def capture_qk(self, store: dict[int, Captured]) -> Iterator[None]:
        """Keep every layer's query, key, value and per-head output as the attention function sees them (after
        q/k norms and rotary), with their autograd graph: {layer: Captured}. The pre-softmax score of head h is
        scaling · query[h] · key[h // (heads / kv_heads)]."""
        prev = ATTN.capture
        ATTN.capture = store
        try:
            yield
        finally:
            ATTN.capture = prev

    @contextlib.contextmanager
    def qk_norm_scales(
        self, record: dict[str, Tensor] | None = None, freeze: dict[str, Tensor] | None = None
    ) -> Iterator[None]:
        """Record the q/k norms' 1/rms ({module path: [..., 1]}, Gemma 3 and Qwen3), or fix them at recorded values
        so query and key are linear in the residual (QK attribution). Shapes must match: same prompt length."""
        names = {m: n for n, m in self.model.named_modules()}
        mods = [blk.get_submodule(p) for blk in self.layers for p in self.family.qk_norms]

        def hook(m, args, out):
            x = args[0]
            if record is not None:
                record[names[m]] = self.family.norm_scale(x, self.family.norm_eps(m)).detach()
            if freeze is not None:
                return self.family.frozen_norm(m, x, freeze[names[m]])
            return None

        handles = [m.register_forward_hook(hook) for m in mods]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def norm_scales(self, input_ids: Tensor) -> dict[str, Tensor]:
        """1/rms of every norm's input on this prompt, keyed by module path.  values: [b, ..., n, 1]"""
        out: dict[str, Tensor] = {}
        with torch.no_grad(), self.record_norm_scales(out):
            self.forward(input_ids)
        return out

    def logits_from_resid(self, resid_normed: Tensor) -> Tensor:
        """Final-normed residual [..., d] -> logits [..., vocab] (softcap applied when the model has one)."""
        logits = resid_normed @ self.W_U.T
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    # ---- generation -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 20, chat: bool = False) -> dict:
        """Greedy continuation with the probability of each chosen token."""
        toks = self.tokenize(prompt, chat=chat)
        ids = toks.ids[None].to(self.device)
        if ids.shape[1] + max_new_tokens > self.max_context:
            raise MechscopeError(f"prompt + {max_new_tokens} new tokens exceed the context of {self.max_context}")
        out_ids: list[int] = []
        probs: list[float] = []
        past = None
        cur = ids
        eos = self.tokenizer.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        for _ in range(max_new_tokens):
            res = self.model(input_ids=cur, cache=past, use_cache=True)
            past = res.cache
            p = torch.softmax(res.logits[0, -1].float(), -1)
            nxt = int(p.argmax())
            out_ids.append(nxt)
            probs.append(float(p[nxt]))
            if nxt in eos:
                break
            cur = torch.tensor([[nxt]], device=self.device)
        return {
            "prompt": prompt,
            "prompt_tokens": toks.strs,
            "completion": self.tokenizer.decode(out_ids),
            "tokens": [self.tokenizer.decode([i]) for i in out_ids],
            "token_probs": probs,
        }


def load_model(name: str = "gemma3-270m", device: str = "cpu") -> ModelAdapter:
    """Load a named, local or hub model and wrap it in an adapter.

    >>> m = load_model("gemma3-270m")
    >>> m.generate("Michael Jordan plays the sport of", max_new_tokens=2)["completion"]
    ' basketball for'
    """
    from mechscope.models.loading import load_hf

    model, tok = load_hf(name, device=device)
    return ModelAdapter(model, tok, name=name)
