"""mechscope: a microscope for language models (transcoders, attribution graphs, interventions).

>>> import mechscope
>>> model = mechscope.load_model("gemma3-270m")
>>> model.generate("Dallas is in the state of", max_new_tokens=1)["completion"]
' Texas'
"""

from mechscope.errors import MechscopeError
from mechscope.models import DEFAULT_MODEL, MODELS, ModelAdapter, load_model

__version__ = "0.1.0"
__all__ = ["MechscopeError", "DEFAULT_MODEL", "MODELS", "ModelAdapter", "load_model", "__version__"]
