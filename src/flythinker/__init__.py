"""FlyThinker: think-while-generating personalized long-form text generation.

    >>> from flythinker import FlyThinker
    >>> model = FlyThinker(generator=g, reasoner=r, lam=0.5)  # doctest: +SKIP
"""

from flythinker.fusion import Fusion
from flythinker.model import FlyThinker, FlyThinkerOutput

__all__ = ["FlyThinker", "FlyThinkerOutput", "Fusion"]
__version__ = "0.1.0"
