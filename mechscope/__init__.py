"""mechscope: a microscope for language models (transcoders, attribution graphs, interventions).

>>> import mechscope
>>> model = mechscope.load_model("gemma3-270m")
>>> model.generate("Dallas is in the state of", max_new_tokens=1)["completion"]
' Texas'
"""

from mechscope.threads import prefer_passive_wait

prefer_passive_wait()  # before torch loads OpenMP: idle threads sleep, so a busy machine does not stall us

from mechscope.errors import MechscopeError  # noqa: E402
from mechscope.models.registry import DEFAULT_MODEL, MODELS  # noqa: E402


def __getattr__(name: str):
    # torch and transformers load on first use, not on `import mechscope`: a refusal (bad option, prompt too
    # long) must not wait seconds for them
    if name in ("ModelAdapter", "load_model"):
        from mechscope import models

        return getattr(models, name)
    raise AttributeError(f"module 'mechscope' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["MechscopeError", "DEFAULT_MODEL", "MODELS", "ModelAdapter", "load_model", "__version__"]
