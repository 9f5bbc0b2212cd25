"""Tiny FlyThinker pairs exported for vLLM, and the reference they are held to (tests/vllm_engine)."""

from __future__ import annotations

from pathlib import Path

import torch

from flythinker.apps.vllm.export import export_vllm
from flythinker.tiny import family_config, random_lm

VOCAB = 512


def make_pair(root: Path, g_family: str, r_family: str, d_g: int, d_r: int, lam: float, seed: int = 0, **fusion):
    """A random FlyThinker (G of ``g_family`` width ``d_g``, R likewise), saved and exported:
    (the model, fp32 eval, the exported folder)."""
    from flythinker.model import FlyThinker

    def cfg(family, d):
        return family_config(
            family, hidden=d, layers=2, heads=d // 64, kv_heads=1, vocab=VOCAB, init_std=0.15, attn=None
        )

    g = random_lm(cfg(g_family, d_g), seed).eval()
    r = random_lm(cfg(r_family, d_r), seed + 1).eval()
    model = FlyThinker(generator=g, reasoner=r, lam=lam, **fusion).eval()
    name = f"{g_family}{d_g}-{r_family}{d_r}-lam{lam}-s{seed}"
    model.save_pretrained(root / name / "run", overwrite=True)
    return model, export_vllm(root / name / "run", root / name / "vllm", overwrite=True)


def prompts(lengths=(1, 7, 23, 40), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def reference_greedy(model, prompt: list[int], n: int) -> list[int]:
    """FlyThinker's reference decoder (``mode="sequential"``), no EOS."""
    return model.generate(torch.tensor([prompt]), max_new_tokens=n, eos_token_id=[], pad_token_id=0)[0].tolist()


def reference_logprobs(model, prompt: list[int], tokens: list[int]) -> list[float]:
    """The training forward's log-probability of each of ``tokens`` after ``prompt``."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return [lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]
