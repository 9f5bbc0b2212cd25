"""The one decoding step: a *stepper* holds the state of the rows decoding now and runs a step.

    logits = stepper.add(input_ids, attention_mask)   # prefill new rows (left-padded): (B_new, V)
    logits = stepper.step(tokens)                      # every row reads its new token: (B,) -> (B, V)
    stepper.keep(rows)                                 # only these rows go on (indices, in order)
    stepper.finish()                                   # R's cache dropped, a worker back to waiting

The state is both models' KV caches, the attention mask, each row's position and ẑ, the latent
its next step fuses; the latent hand-over happens here and nowhere else:

    step k:   G( E_G(s_n) + λρ·ẑ_{n-1} ) -> logits for s_{n+1}     (latent from step k-1)
              R( s_n )                   -> z_n                      (ready for step k+1)

:class:`PairStepper` runs G's runner and R's step through a *Reasoner handle*
(``prefill / launch / latent / finish``): :class:`InlineReasoner` in place (the reference), or a
thread, CUDA stream or worker process (concurrent.py, shm.py, dist_link.py), which compute the
same numbers. How R runs is the model's ``reasoning``: never (λ = 0), once over the prompt
(static), every token, or every token after R's own prompt (:class:`SeparateReasoner`).
The shared-base stepper (shared_base.py) and the captured stepper (captured.py) keep this
interface; the decoding loop (loop.py) and the server's engine drive any of them.
"""

from __future__ import annotations

import torch

from flythinker.data.prompts import collate
from flythinker.decoding.caches import merge_caches, pad_left, padding_columns, select_rows
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner
from flythinker.errors import UserError
from flythinker.lm import positions_from_mask


class InlineReasoner:
    """R's runner called in place: ``launch`` computes z_n before G's step (the reference)."""

    def __init__(self, model):
        self.runner, self.z = ReasonerRunner(model), None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T, d_R)
        return self.runner.prefill(input_ids, attention_mask, position_ids)

    def launch(self, tokens, attention_mask, position_ids) -> None:
        self.z = self.runner.step(tokens, attention_mask, position_ids)  # (B, 1, d_R)

    def latent(self) -> torch.Tensor:
        return self.z

    def finish(self) -> None:
        self.runner.cache = self.z = None


class SeparateReasoner:
    """Any Reasoner handle over R's own prompt (``profile_in: reasoner``): the prefill reads R's
    prompt, not G's (G's prompt takes no latent), and each step's mask and positions are G's moved
    onto R's sequence (the generated tokens are the same in both). A worker process that keeps its
    own mask and positions builds them from R's prompt it was given, the same numbers."""

    def __init__(self, inner, input_ids, attention_mask):  # (B, T_R) left-padded
        self.inner, self.ids, self.mask = inner, input_ids, attention_mask.long()
        self.generator_columns, self.offset = 0, None

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:  # (B, T_R, d_R)
        self.generator_columns = input_ids.shape[1]
        self.mask = self.mask.to(attention_mask.device)
        self.offset = (self.mask.sum(1) - attention_mask.long().sum(1))[:, None]  # (B, 1) R's positions lead G's
        return self.inner.prefill(self.ids, self.mask, positions_from_mask(self.mask))

    def launch(self, tokens, attention_mask, position_ids) -> None:
        mask = torch.cat([self.mask, attention_mask[:, self.generator_columns :]], dim=1)
        self.inner.launch(tokens, mask, position_ids + self.offset.to(position_ids.device))

    def latent(self) -> torch.Tensor:
        return self.inner.latent()

    def finish(self) -> None:
        self.inner.finish()


class PairStepper:
    """G's runner and R's handle over the rows decoding now; see the module docstring.

    ``handle`` is where R's step runs (default: in place); rows may join (``add`` again) and leave
    (``keep``) when the handle's runner lives in this process (``handle.runner``); a worker
    process's handle decodes one batch from its first ``add`` to ``finish``. ``owns_handle``:
    ``close`` closes the handle too (its thread)."""

    def __init__(self, model, handle=None, owns_handle: bool = False):
        self.model, self.reasoning = model, model.reasoning
        self.g = GeneratorRunner(model)
        self.device = self.g.device
        if self.reasoning == "never":
            handle = None  # λ = 0 is SFT: R is never run, the fusion ignores zero latents
        elif handle is None:
            handle = InlineReasoner(model)
        self.handle, self.owns_handle = handle, owns_handle and handle is not None
        self.mask = self.position = self.latent = None  # (B, T), (B, 1), (B, 1, d_R)

    @property
    def size(self) -> int:
        return 0 if self.mask is None else self.mask.shape[0]

    @property
    def runs_every_step(self) -> bool:
        return self.reasoning in ("every_token", "own_prompt")

    def _runner(self):
        return getattr(self.handle, "runner", None)

    def add_prompts(self, prompts: list[list[int]], pad_token_id: int) -> torch.Tensor:  # -> (B_new, V)
        """Token-id lists, left-padded into a batch and added as the last rows."""
        if not prompts or not all(prompts):
            raise UserError("every prompt needs at least one token")
        batch = collate(prompts, pad_token_id)
        return self.add(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def add(self, input_ids, attention_mask) -> torch.Tensor:  # (B_new, T) left-padded -> (B_new, V)
        """Prefill new rows (R, then G with R's latents placed as in training) and append them."""
        if self.size and self.handle is not None and self._runner() is None:
            raise UserError("rows join a running decode only when R's step runs in this process")
        mask = attention_mask.long()
        positions = positions_from_mask(mask)
        g_old, self.g.cache = self.g.cache, None
        r_old = None
        if self._runner() is not None:
            r_old, self._runner().cache = self._runner().cache, None
        if self.handle is not None:
            latents = self.handle.prefill(input_ids, mask, positions)  # (B_new, T, d_R)
        else:
            latents = torch.zeros(*input_ids.shape, 1)
        logits = self.g.prefill(input_ids, mask, positions, latents)
        t_old, t_new = (0 if self.mask is None else self.mask.shape[1]), mask.shape[1]
        grow_old, grow_new = max(0, t_new - t_old), max(0, t_old - t_new)
        self.g.cache = merge_caches(g_old, self.g.cache, grow_old, grow_new)
        if (runner := self._runner()) is not None:
            runner.cache = merge_caches(r_old, runner.cache, grow_old, grow_new) if self.runs_every_step else None
        latent = latents[:, -1:] if self.handle is not None else torch.zeros(input_ids.shape[0], 1, 1)
        if self.mask is None:
            self.mask, self.position, self.latent = mask, positions[:, -1:], latent
        else:
            self.mask = torch.cat([pad_left(self.mask, grow_old, 1), pad_left(mask.to(self.mask.device), grow_new, 1)])
            self.position = torch.cat([self.position, positions[:, -1:].to(self.position.device)])
            self.latent = torch.cat([self.latent, latent.to(self.latent.device)])
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, V)
        """Every row reads its new token: R(s_n) -> z_n (on the handle) while G(s_n + ẑ_{n-1})."""
        self._advance(tokens)
        if self.runs_every_step:
            self.handle.launch(tokens, self.mask, self.position)  # R reads s_n -> z_n, meanwhile:
        logits = self.g.step(tokens, self.latent, self.mask, self.position)  # G reads s_n + ẑ_{n-1}
        if self.runs_every_step:
            self.latent = self.handle.latent()
        return logits

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows, in order); an empty set resets."""
        if len(rows) == 0:
            self.g.cache = self.mask = self.position = self.latent = None
            if self._runner() is not None:
                self._runner().cache = None
            return
        if self.handle is not None and self._runner() is None:
            raise UserError("rows leave a running decode only when R's step runs in this process")
        drop = self._keep_rows(rows)
        select_rows(self.g.cache, rows, drop)
        if (runner := self._runner()) is not None and runner.cache is not None:
            select_rows(runner.cache, rows, drop)

    def _advance(self, tokens: torch.Tensor) -> None:
        """Every row takes one more token: the mask grows a column, each position moves on."""
        if tokens.shape != (self.size,):
            raise UserError(f"step needs one token per row ({self.size}), got {tuple(tokens.shape)}")
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.position = self.position + 1

    def _keep_rows(self, rows: torch.Tensor) -> int:
        """Only ``rows`` of the mask, positions and latents stay; returns how many leading columns
        (padding in every row left) were dropped, for the caches to drop too."""
        mask = self.mask[rows]
        drop = padding_columns(mask)
        self.mask, self.position, self.latent = mask[:, drop:], self.position[rows], self.latent[rows]
        return drop

    def finish(self) -> None:
        """The decode is over: caches dropped (a worker process goes back to waiting for a job)."""
        self.g.cache = self.mask = self.position = self.latent = None
        if self.handle is not None:
            self.handle.finish()

    def close(self) -> None:
        self.finish()
        if self.owns_handle:
            self.handle.close()
