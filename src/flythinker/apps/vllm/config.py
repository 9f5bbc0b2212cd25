"""The config of a FlyThinker folder exported for vLLM: G's and R's transformers configs, the fusion.

vLLM reads one ``config.json`` per model. An exported folder's holds G's config as
``text_config`` (so vLLM sizes its vocabulary, context and logits from G), R's as
``reasoner_config``, and the fusion exactly as the trained model uses it: λ, ρ (the value
``FlyThinker.rho()`` returned when the folder was exported, never recomputed from a partitioned
table), the fusion mode, the gate and the centred or standardised latent.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

MODEL_TYPE = "flythinker"
ARCHITECTURE = "FlyThinkerForCausalLM"


def _sub_config(value) -> PretrainedConfig | None:
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    return CONFIG_MAPPING[value.pop("model_type")](**value)


class FlyThinkerVllmConfig(PretrainedConfig):
    """``config.json`` of an exported folder (``flythinker export vllm``)."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": AutoConfig, "reasoner_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        reasoner_config=None,
        lam: float = 0.5,
        rho: float = 1.0,
        fusion: str = "prefix",
        gate: str = "none",
        center_latent: bool = False,
        standardize_latent: bool = False,
        **kwargs,
    ):
        self.text_config = _sub_config(text_config)
        self.reasoner_config = _sub_config(reasoner_config)
        self.lam, self.rho, self.fusion, self.gate = float(lam), float(rho), fusion, gate
        self.center_latent, self.standardize_latent = bool(center_latent), bool(standardize_latent)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        return self.text_config if self.text_config is not None else self


def register_config() -> None:
    """Let ``AutoConfig`` read an exported folder's ``config.json`` (idempotent)."""
    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, FlyThinkerVllmConfig)
