"""FlyThinker: think-while-generating personalized long-form text generation.

>>> from flythinker import FlyThinker
>>> model = FlyThinker(generator=g, reasoner=r, lam=0.5)  # doctest: +SKIP
>>> model, tokenizer = load_model("runs/my-model")        # a FlyThinker or a plain causal LM  # doctest: +SKIP
"""

from flythinker import decoding  # noqa: E402,F401  registers the decoders of FlyThinker.generate
from flythinker.auto import load_model  # noqa: E402
from flythinker.fusion import Fusion
from flythinker.model import FlyThinker, FlyThinkerOutput
from flythinker.separate import SeparatePromptThinker  # registers "separate_prompts" with the loader
from flythinker.static import StaticThinker  # registers the "static" variant with the loader

__all__ = ["FlyThinker", "FlyThinkerOutput", "Fusion", "SeparatePromptThinker", "StaticThinker", "load_model"]
__version__ = "0.1.0"
