"""The paper's fusion f(): how a Reasoner latent enters the Generator.

    e'_i = E_G(s_i) + λ · ρ · z_{i-1} / ‖z_{i-1}‖        (i ≥ 1),    e'_0 = E_G(s_0)

z is the Reasoner's final-layer hidden state (after the final norm); ρ is the mean L2 norm
of what the Generator's input-embedding layer outputs over its vocabulary (a detached scalar): the
paper's training-time rule, measured where families that scale embeddings inside the layer
(Gemma) scale them. The official two-GPU script instead rescales to the norm of individual
prompt tokens at inference, a train/test mismatch; here training and every decoder call
this one module, so they cannot disagree.

This module knows nothing of models or data: tensors in, tensors out.
"""

from __future__ import annotations

import torch
from torch import nn

FUSION_MODES = ("prefix", "linear")
GATES = ("none", "scalar", "vector")


def embedding_norm(weight: torch.Tensor) -> torch.Tensor:
    """ρ: mean L2 norm of the rows of an embedding table (V, d) → detached fp32 scalar.

    >>> embedding_norm(torch.ones(4, 9)).item()
    3.0
    """
    return weight.detach().float().norm(dim=-1).mean()


@torch.no_grad()
def embedding_output_norm(embedding: nn.Module, num_embeddings: int | None = None, chunk: int = 4096) -> torch.Tensor:
    """ρ as docs/design.md#the-method-and-ρ defines it: the mean L2 norm of what an embedding *layer* outputs, over every
    token of its vocabulary → detached fp32 scalar (on the layer's device).

    The layer is called on ``chunk`` ids at a time, so families that scale the looked-up rows inside
    the module (Gemma's √d, a LoRA delta on the embedding) are measured as the decoder sees them,
    and a 150k × 4k table is never copied whole.

    >>> emb = nn.Embedding(4, 9); _ = nn.init.ones_(emb.weight)
    >>> embedding_output_norm(emb).item()
    3.0
    """
    weight = embedding.weight
    n = num_embeddings if num_embeddings is not None else weight.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=weight.device)
    for start in range(0, n, chunk):
        ids = torch.arange(start, min(start + chunk, n), device=weight.device)
        total += embedding(ids).float().norm(dim=-1).sum(dtype=torch.float64)
    return (total / max(n, 1)).float()


class Fusion(nn.Module):
    """Adds λ·ρ·ẑ (a norm-matched Reasoner latent) to Generator input embeddings.

    ``mode="prefix"`` (the paper) adds a d_R-dim latent into the first d_R dimensions of the
    d_G-dim embedding (needs d_R ≤ d_G); ``mode="linear"`` learns a d_R→d_G projection first
    (initialised to the prefix embedding when d_R ≤ d_G, so both modes start identical).

    ``gate`` (opt-in, not in the paper): a learned gate g on the norm-matched latent, initialised
    at 0 — one scalar, or one per dimension of G as in LayerScale — so that the offset is
    λ·g·ρ·ẑ and training starts exactly at SFT, then learns how much latent to use.

    ``detach_norm``: treat ‖z‖ as a constant in the backward pass, as the authors' released
    training script does (the forward value is the same; only R's gradient changes).

    :meth:`enable_centering` (opt-in, not in the paper): subtract R's mean latent μ before the
    norm-matching, λ·ρ·(z−μ)/‖z−μ‖, so that the direction added is what varies between tokens and
    texts, not the constant direction most of z shares. μ is measured once, on the first training
    batch's real positions (averaged over processes), then saved with the model and fixed.
    ``enable_centering(standardize=True)`` also divides each dimension by its standard deviation σ,
    λ·ρ·u/‖u‖ with u = (z−μ)/σ, so that no few high-variance dimensions (or the constant) dominate
    the direction G reads.

    >>> f = Fusion(d_reasoner=8, d_generator=16, lam=0.5)
    >>> f(torch.zeros(2, 3, 16), torch.randn(2, 3, 8), rho=torch.tensor(1.0)).shape
    torch.Size([2, 3, 16])
    """

    def __init__(
        self,
        d_reasoner: int,
        d_generator: int,
        lam: float = 0.5,
        mode: str = "prefix",
        gate: str = "none",
        detach_norm: bool = False,
    ):
        super().__init__()
        self.detach_norm = bool(detach_norm)
        self.register_buffer("latent_mean", None)  # μ, with enable_centering()
        self.register_buffer("latent_mean_set", None)
        self.register_buffer("latent_scale", None)  # 1/σ, with enable_centering(standardize=True)
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        if gate not in GATES:
            raise ValueError(f"fusion gate must be one of {GATES}, got {gate!r}")
        self.gate_mode = gate
        self.gate = None if gate == "none" else nn.Parameter(torch.zeros(() if gate == "scalar" else (d_generator,)))
        if not (isinstance(lam, (int, float)) and lam >= 0 and lam == lam and lam != float("inf")):
            raise ValueError(f"lam must be a finite number ≥ 0, got {lam!r}")
        if mode == "prefix" and d_reasoner > d_generator:
            raise ValueError(
                f"fusion='prefix' needs reasoner hidden size ≤ generator hidden size "
                f"(got {d_reasoner} > {d_generator}); use fusion='linear'"
            )
        self.d_reasoner, self.d_generator = d_reasoner, d_generator
        self.lam, self.mode = float(lam), mode
        self.proj = None
        if mode == "linear":
            self.proj = nn.Linear(d_reasoner, d_generator, bias=False)
            with torch.no_grad():
                if d_reasoner <= d_generator:
                    self.proj.weight.copy_(torch.eye(d_generator, d_reasoner))
                else:
                    nn.init.orthogonal_(self.proj.weight)

    def enable_centering(self, standardize: bool = False) -> None:
        """Subtract R's mean latent before the norm-matching (μ measured on the first training batch);
        ``standardize``: also divide each dimension by its standard deviation (measured with μ)."""
        device = self.gate.device if self.gate is not None else None
        if self.latent_mean is None:
            self.latent_mean = torch.zeros(self.d_reasoner, device=device)
            self.latent_mean_set = torch.zeros((), dtype=torch.bool, device=device)
        if standardize and self.latent_scale is None:
            self.latent_scale = torch.ones(self.d_reasoner, device=device)

    @torch.no_grad()
    def measure_mean(self, latents: torch.Tensor, mask: torch.Tensor | None) -> None:
        """μ (and 1/σ when standardising) ← the moments of ``latents`` (B, T, d_R) where ``mask``
        (B, T) is 1, over every process."""
        w = torch.ones(latents.shape[:2], device=latents.device) if mask is None else mask.float()
        x, w = latents.float(), w[..., None]
        n = _all_sum(w.sum()[None]).clamp_min(1.0)
        mean = _all_sum((x * w).sum((0, 1))) / n
        self.latent_mean.copy_(mean)
        if self.latent_scale is not None:  # two passes: E[x²] − μ² cancels where σ ≪ |μ|
            sigma = (_all_sum(((x - mean).square() * w).sum((0, 1))) / n).sqrt()
            self.latent_scale.copy_(sigma.clamp_min(1e-4 * sigma.max().clamp_min(1e-12)).reciprocal())
        self.latent_mean_set.fill_(True)

    def latent_offset(self, latent: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        """λ·ρ·z/‖z‖ mapped to the Generator's width: (..., d_R) → (..., d_G)."""
        if self.latent_mean is not None:  # the centred latent z − μ
            latent = latent - self.latent_mean.to(latent.dtype)
        if self.latent_scale is not None:  # standardised: (z − μ)/σ
            latent = latent * self.latent_scale.to(latent.dtype)
        z = self.proj(latent) if self.proj is not None else latent
        # normalise in fp32: bf16 norms of 1k-dim vectors lose ~3 significant digits
        zf = z.float()
        norm = zf.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        zf = zf * (self.lam * rho.float() / (norm.detach() if self.detach_norm else norm))
        if zf.shape[-1] < self.d_generator:  # prefix mode, d_R < d_G: first d_R dims
            zf = nn.functional.pad(zf, (0, self.d_generator - zf.shape[-1]))
        if self.gate is not None:
            zf = zf * self.gate.float()
        return zf

    def forward(
        self,
        embeds: torch.Tensor,  # (B, T, d_G) Generator input embeddings E_G(s_i)
        latents: torch.Tensor,  # (B, T, d_R) latent to add at each position (already shifted: z_{i-1})
        rho: torch.Tensor,  # () mean embedding-row norm of G
        latent_mask: torch.Tensor | None = None,  # (B, T) 1 where a latent applies
    ) -> torch.Tensor:  # (B, T, d_G)
        if self.lam == 0.0:  # exactly SFT: no arithmetic on the embeddings at all
            return embeds
        if self.latent_mean is not None and self.training and not bool(self.latent_mean_set):
            self.measure_mean(latents, latent_mask)  # the first training batch fixes μ
        offset = self.latent_offset(latents, rho)
        if latent_mask is not None:
            offset = offset * latent_mask.unsqueeze(-1).to(offset.dtype)
        return (embeds.float() + offset).to(embeds.dtype)

    def gate_record(self) -> dict:
        """The gate's value for a training log: ``{"gate": g}``, or a vector's mean and RMS; ``{}`` without one."""
        if self.gate is None or self.gate.numel() == 0:  # (a ZeRO-3 shard reads as empty)
            return {}
        g = self.gate.detach().float()
        return (
            {"gate": g.item()}
            if g.ndim == 0
            else {"gate": g.mean().item(), "gate_rms": g.square().mean().sqrt().item()}
        )

    def extra_repr(self) -> str:
        gate = f", gate={self.gate_mode!r}" if self.gate is not None else ""
        detach = ", detach_norm=True" if self.detach_norm else ""
        center = ", centred" if self.latent_mean is not None else ""
        center = ", standardised" if self.latent_scale is not None else center
        return (
            f"d_reasoner={self.d_reasoner}, d_generator={self.d_generator}, lam={self.lam}, "
            f"mode={self.mode!r}{gate}{detach}{center}"
        )


class RhoCache:
    """ρ of a Generator's embedding layer, computed once and kept until the table changes (an
    optimizer step, a load, a move to another device or dtype: the weight's version, storage and
    dtype are the key, and those of a LoRA on the embedding). A value fixed with :meth:`fix`
    (ZeRO-3, whose shards read as empty outside forward) is kept until :meth:`clear`."""

    def __init__(self):
        self.fixed: torch.Tensor | None = None
        self.auto: tuple | None = None  # (key of the embedding's weights, ρ)

    def value(self, embedding: nn.Module) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        w = embedding.weight
        if w.numel() == 0:  # ZeRO-3 partitions the table outside forward: the shard is empty
            raise RuntimeError(
                "the generator's embedding table is partitioned (ZeRO-3); call model.cache_rho() "
                "before wrapping the model, or compute ρ from the gathered weights"
            )
        extra = tuple((_version(p), p.data_ptr()) for name, p in embedding.named_parameters() if name != "weight")
        key = (_version(w), w.data_ptr(), w.dtype, w.device, extra)
        if self.auto is None or self.auto[0] != key:
            self.auto = (key, embedding_output_norm(embedding))
        return self.auto[1]

    def fix(self, embedding: nn.Module, value=None) -> torch.Tensor:
        self.fixed = None
        rho = self.value(embedding) if value is None else torch.as_tensor(value, dtype=torch.float32)
        self.fixed = rho.detach()
        return self.fixed

    def clear(self) -> None:
        self.fixed, self.auto = None, None


def _version(t: torch.Tensor) -> int | None:
    """A tensor's in-place version counter (None for inference tensors, which have none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every process (itself without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def shift_latents(
    latents: torch.Tensor,  # (B, T, d_R) z_i for every position
    attention_mask: torch.Tensor | None,  # (B, T) 1 for real tokens
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-token lag for the training forward: position i receives z_{i-1}.

    Returns the shifted latents (B, T, d_R) and a mask (B, T) that is 1 where a real previous
    token exists — 0 at each row's first real token (e'_0 = E_G(s_0)) and on padding, so left
    padding never leaks a pad position's latent into a row.
    """
    shifted = torch.cat([torch.zeros_like(latents[:, :1]), latents[:, :-1]], dim=1)
    if attention_mask is None:
        mask = torch.ones(latents.shape[:2], dtype=torch.long, device=latents.device)
    else:
        mask = attention_mask.long()
    prev = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    return shifted, prev * mask
