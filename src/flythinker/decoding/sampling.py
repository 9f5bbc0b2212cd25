"""Choosing the next token: greedy or sampled, with transformers' logits warpers.

Every decoder (sequential or concurrent) samples through one :class:`TokenSampler` owned by
the Generator side, so the same seed gives the same tokens whichever decoder runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flythinker.errors import UserError

# Temperatures below this decode greedily, the limit of sampling as T -> 0 (dividing the logits by a
# smaller one can overflow to inf and NaN); vLLM draws the same line.
SAMPLING_EPS = 1e-5


@dataclass
class SamplingConfig:
    """How the next token is chosen."""

    do_sample: bool = False
    """Sample from the distribution (True) or take the argmax (False)."""
    temperature: float = 1.0
    """Softmax temperature (> 0); only used when sampling; below ``SAMPLING_EPS`` the argmax."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (0, 1]."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    seed: int | None = None
    """Seed of the sampler's own torch.Generator (None: nondeterministic)."""

    def __post_init__(self):
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be ≥ 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature < SAMPLING_EPS


class TokenSampler:
    """Maps last-position logits (B, V) to next tokens (B,).

    >>> s = TokenSampler(SamplingConfig(do_sample=True, top_k=5, seed=0), device="cpu")
    >>> s(torch.randn(2, 10), torch.zeros(2, 3, dtype=torch.long)).shape
    torch.Size([2])
    """

    def __init__(self, cfg: SamplingConfig, device: torch.device | str):
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.cfg = cfg
        self.warpers = LogitsProcessorList()
        if not cfg.greedy:
            # same order as transformers' generate: temperature, top-k, top-p
            if cfg.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k > 0:
                self.warpers.append(TopKLogitsWarper(cfg.top_k))
            if cfg.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(cfg.top_p))
        self.rng = None  # the sampler's own torch.Generator (seeded), not the Generator model
        if not cfg.greedy and cfg.seed is not None:
            self.rng = torch.Generator(device=device).manual_seed(cfg.seed)

    def __call__(
        self,
        logits: torch.Tensor,  # (B, V)
        sequences: torch.Tensor,  # (B, T) prompt + tokens so far (some warpers read it)
    ) -> torch.Tensor:  # (B,)
        logits = logits.float()
        if self.cfg.greedy:
            return logits.argmax(dim=-1)
        scores = self.warpers(sequences, logits)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.rng).squeeze(1)
