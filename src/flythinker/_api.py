"""The package's public names, imported on first use (``flythinker/__init__.py``), with the
registries they fill: the decoders of ``FlyThinker.generate`` and the saved variants."""

from flythinker import decoding  # noqa: F401  registers the decoders of FlyThinker.generate
from flythinker.auto import load_model
from flythinker.fusion import Fusion
from flythinker.model import FlyThinker, FlyThinkerOutput
from flythinker.separate import SeparatePromptThinker  # registers "separate_prompts" with the loader
from flythinker.static import StaticThinker  # registers the "static" variant with the loader

__all__ = ["FlyThinker", "FlyThinkerOutput", "Fusion", "SeparatePromptThinker", "StaticThinker", "load_model"]
