"""FlyThinker on vLLM: the ``vllm.general_plugins`` entry point, the model, the export.

vLLM calls :func:`register` in each of its processes (``pyproject.toml``'s entry point), so that
a folder written by ``flythinker export vllm`` is served by ``vllm serve OUT`` and
``vllm.LLM(model=OUT)``. Nothing here imports vLLM until vLLM itself calls in; the core of
FlyThinker never imports this package.
"""

from __future__ import annotations


def register() -> None:
    """Register the exported folder's config with transformers and the model with vLLM."""
    from flythinker.apps.vllm.config import ARCHITECTURE, register_config

    register_config()
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        from flythinker.apps.vllm.model import FlyThinkerForCausalLM

        ModelRegistry.register_model(ARCHITECTURE, FlyThinkerForCausalLM)
