"""The package's public names, imported on first use (``flythinker/__init__.py``)."""

from flythinker.auto import load_model
from flythinker.fusion import Fusion
from flythinker.model import FlyThinker, FlyThinkerOutput
from flythinker.separate import SeparatePromptThinker
from flythinker.static import StaticThinker

__all__ = ["FlyThinker", "FlyThinkerOutput", "Fusion", "SeparatePromptThinker", "StaticThinker", "load_model"]
