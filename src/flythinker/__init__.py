"""FlyThinker: think-while-generating personalized long-form text generation.

>>> from flythinker import FlyThinker
>>> model = FlyThinker(generator=g, reasoner=r, lam=0.5)  # doctest: +SKIP
>>> model, tokenizer = load_model("runs/my-model")        # a FlyThinker or a plain causal LM  # doctest: +SKIP

The names below load on first use (``flythinker._api``), so ``import flythinker`` and the
``flythinker`` command's ``--help`` do not import torch.
"""

__all__ = ["FlyThinker", "FlyThinkerOutput", "Fusion", "SeparatePromptThinker", "StaticThinker", "load_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from flythinker import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'flythinker' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
