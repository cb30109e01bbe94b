"""One Session: a model, its transcoder set and its feature index, loaded lazily, and what you do with them.

Every front end (the CLI, the web server, the case-study runner, the benchmarks) goes through a Session
instead of writing its own "load model → transcoders → index" sequence.

>>> from mechscope.session import Session
>>> s = Session("gemma3-270m")                                  # nothing loaded yet      # doctest: +SKIP
>>> g = s.trace("Dallas is in the state of")                    # loads model + set        # doctest: +SKIP
>>> g.scores()["replacement_score"]                                                         # doctest: +SKIP
>>> s.feature(12, 345)["label"]                                 # dashboard from the index  # doctest: +SKIP
>>> s.swap("Dallas is in the state of", "Oakland is in the state of")["after"][0]          # doctest: +SKIP
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechscope.errors import MechscopeError
from mechscope.models.registry import DEFAULT_MODEL
from mechscope.progress import step

if TYPE_CHECKING:
    from mechscope.attribution import AttributionConfig, Graph
    from mechscope.features import FeatureIndex
    from mechscope.interventions import Edit
    from mechscope.models import ModelAdapter
    from mechscope.transcoders import CrossLayerTranscoder, TranscoderSet


class Session:
    """Model + transcoders + feature index for one model name; each is loaded on first use.

    model: a registered name (`mechscope models`), a local Hugging Face directory, or a loaded ModelAdapter.
    transcoders: a set directory (default: the model's own). index: a feature index path (default: the
    model's); the default index is ignored when it was built for another set (its labels would describe other
    features), a named one is refused with one line naming both sets.
    """

    def __init__(
        self,
        model: "str | ModelAdapter" = DEFAULT_MODEL,
        transcoders: str | Path | None = None,
        index: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        if isinstance(model, str):
            self.model_name = model
        else:
            self.model_name = model.name
            self.__dict__["model"] = model  # already loaded: cached_property reads it from here
        self.transcoders_path = str(transcoders) if transcoders else None
        self.index_path = Path(index) if index else None
        self.device = device

    # ---- lazily loaded parts ------------------------------------------------------------------------
    def check_transcoders(self) -> Path:
        """The set's directory; raises MechscopeError before any model loads if there is none."""
        from mechscope.transcoders.registry import find_transcoders

        return find_transcoders(self.model_name, self.transcoders_path)

    @cached_property
    def model(self) -> "ModelAdapter":
        from mechscope.models import load_model
        from mechscope.models.loading import resolve_device

        with step(f"loading model {self.model_name}"):
            return load_model(self.model_name, device=str(resolve_device(self.device)))

    @cached_property
    def transcoders(self) -> "TranscoderSet | CrossLayerTranscoder":
        from mechscope.transcoders import load_default_transcoders

        self.check_transcoders()
        model = self.model
        with step("loading transcoders"):
            return load_default_transcoders(model, self.transcoders_path)

    @cached_property
    def index(self) -> "FeatureIndex | None":
        """The feature index built for this transcoder set, or None."""
        from mechscope.features import FeatureIndex, index_path

        ts = self.transcoders
        with step("opening the feature index"):
            if self.index_path is not None:  # asked for by name: another set's index is refused, not ignored
                idx = FeatureIndex(self.index_path, self.model.tokenizer)
                self._check_set(idx)
                return idx
            try:
                return FeatureIndex.matching(index_path(self.model_name), ts, self.model.tokenizer)
            except MechscopeError:
                return None

    def _check_set(self, idx: "FeatureIndex") -> None:
        """One line naming both sets when `idx` was built for another transcoder set than this session's."""
        from mechscope.features.integrity import set_fingerprint

        try:
            d = self.check_transcoders()
        except MechscopeError:
            return  # no set to compare with: dashboards and search need none
        idx.check_set(str(self.transcoders_path or d), set_fingerprint(d))

    def labels(self) -> dict[str, str]:
        """Feature labels ("L/F" → label) from the matching index; empty without one."""
        return self.index.labels() if self.index is not None else {}

    # ---- what a session does ------------------------------------------------------------------------
    def trace(self, prompt: str, cfg: "AttributionConfig | None" = None, chat: bool = False) -> "Graph":
        """The attribution graph of `prompt` (see `mechscope.attribution.attribute`)."""
        from mechscope.attribution import attribute

        model, ts = self.model, self.transcoders
        with step("attributing (forward, then rows in rounds of the most influential features)"):
            return attribute(model, ts, prompt, cfg, chat=chat)

    def validate(self, graph: "Graph", top_n: int = 20) -> dict:
        """Predicted vs measured ablation effects of the graph's `top_n` most influential features."""
        from mechscope.interventions import validate_graph

        with step(f"validating: ablating {top_n} features one by one"):
            return validate_graph(self.model, self.transcoders, graph, top_n=top_n)

    def intervene(self, prompt: str, edits: "list[Edit]", **kw: Any) -> dict:
        """Set / scale / ablate features; before vs after (see `mechscope.interventions.intervene`)."""
        from mechscope.interventions import intervene

        return intervene(self.model, self.transcoders, prompt, edits, **kw)

    def swap(self, prompt: str, donor: str, **kw: Any) -> dict:
        """Transplant the donor's concept features (see `mechscope.interventions.swap`)."""
        from mechscope.interventions import swap

        return swap(self.model, self.transcoders, prompt, donor, **kw)

    def locate(self, prompt: str, donor: str, watch: list[str], **kw: Any) -> dict:
        """Which MLP component carries the difference between two prompts (see `locate_concept`)."""
        from mechscope.interventions import locate_concept

        return locate_concept(self.model, self.transcoders, prompt, donor, watch, **kw)

    def probe(self, text: str, token: str | None = None, pos: int | None = None, limit: int = 20) -> dict:
        """Features active at one position of `text`, most specific first (JSON-ready)."""
        from mechscope.features.probe import hits_to_json, probe_features

        return hits_to_json(
            *probe_features(self.model, self.transcoders, text, token=token, pos=pos, index=self.index, limit=limit)
        )

    def feature(self, layer: int, feature: int) -> dict:
        """The dashboard of one feature (examples, logit effects, histogram) from the index."""
        return self._index_only().feature(layer, feature)

    def search(self, query: str, by: str = "label", limit: int = 20) -> list[dict]:
        """Features by label, input token or output token (from the index; no model needed)."""
        return self._index_only().search(query, by=by, limit=limit)

    def _index_only(self) -> "FeatureIndex":
        """The index for dashboards and search: needs only the tokenizer, not the weights."""
        from mechscope.features import FeatureIndex

        if "index" in self.__dict__ and self.index is not None:
            return self.index
        tok = self.tokenizer
        if self.index_path:
            idx = FeatureIndex(self.index_path, tok)
            self._check_set(idx)
            return idx
        with step("opening the feature index"):
            return FeatureIndex.for_model(self.model_name, tok)

    @cached_property
    def tokenizer(self):
        """The tokenizer alone when it can be read without loading weights (enough to print examples)."""
        if "model" in self.__dict__:
            return self.model.tokenizer
        from mechscope.models.loading import converted_dir
        from mechscope.models.registry import MODELS, resolve_model_name
        from mechscope.models.tokenizer import load_tokenizer

        name = resolve_model_name(self.model_name)
        src = converted_dir(name) if name in MODELS else Path(name)
        try:
            return load_tokenizer(src, fast=name in MODELS)
        except OSError:
            return self.model.tokenizer
