"""The training recipe: FlyThinker (G + R jointly) or SFT (G alone), on one CPU or many GPUs.

Features (torchtune-style recipe, accelerate as the engine):

* AdamW, linear warmup then cosine/linear decay, gradient accumulation, global-norm clipping,
  fp32 or bf16 autocast, gradient checkpointing of both models, seeded everything;
* one process, or ``accelerate launch`` / ``torchrun`` with DDP, FSDP or DeepSpeed ZeRO-2/3
  (configs in ``configs/accelerate/``); under ZeRO-3/FSDP ρ is computed once from the full
  embedding table before the model is sharded (the official code can read an empty shard);
* checkpoints every N steps and at each epoch's end, atomic, keep-last-K, resumable with
  the same loss curve (model, optimizer, scheduler, RNG states and data position);
* dev loss each epoch (optionally generation metrics), best model kept in ``RUN/best``;
* progress bar, ``RUN/log.jsonl``, ``RUN/curves.png``; a NaN/inf loss stops the run and
  keeps the last good checkpoint.

    >>> from flythinker.train.config import load_config
    >>> from flythinker.train.trainer import train
    >>> result = train(load_config("src/flythinker/configs/tiny_flythinker.yaml"), "runs/tiny")  # doctest: +SKIP
    >>> result.final_checkpoint, result.losses[-1]                                               # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from pathlib import Path

import torch

from flythinker.errors import UserError
from flythinker.lm import pad_id
from flythinker.train import assemble
from flythinker.train.checkpoint import (
    check_same_setup,
    export_model,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    save_checkpoint,
    state_fingerprint,
)
from flythinker.train.config import TrainConfig, check_paths
from flythinker.train.curves import RunLog, plot_curves
from flythinker.train.engine import cache_rho, is_sharded, make_accelerator
from flythinker.train.result import TrainingDiverged, TrainResult
from flythinker.train.schedule import lr_factor, token_windows
from flythinker.train.tracking import start_tracking

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "lr_factor", "train"]

RUN_FILES = ("config.yaml", "log.jsonl", "curves.png", "result.json", "checkpoints", "best", "final")


class Trainer:
    """One run: ``setup()`` builds everything, ``fit()`` trains, returns a :class:`TrainResult`."""

    def __init__(self, cfg: TrainConfig, out_dir, model=None, tokenizer=None, train_examples=None, dev_examples=None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.model, self.tokenizer = model, tokenizer
        self.train_examples, self.dev_examples = train_examples, dev_examples
        self.log = RunLog(self.out / "log.jsonl")
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.best_dev_loss, self.train_time, self.tokens = None, 0.0, 0

    # --- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        from accelerate.utils import set_seed

        cfg = self.cfg
        check_paths(cfg, model=self.model is None, data=self.train_examples is None)
        self.acc = acc = make_accelerator(cfg, self.out)
        self.ga, self.world = acc.gradient_accumulation_steps, acc.num_processes
        set_seed(cfg.train.seed)
        self._prepare_run_dir()
        self.log.tracker = start_tracking(acc, cfg, self.out)  # train.report_to (None: log.jsonl only)
        self._load_data()
        self._build_model()
        self._build_loaders()
        self._build_optimizer()
        self._resume()

    def _prepare_run_dir(self) -> None:
        t, acc = self.cfg.train, self.acc
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out}: is a file, not a run folder (pass another --out)")
        existing = [f for f in RUN_FILES if (self.out / f).exists()]
        if existing and not (t.resume or t.overwrite):
            raise UserError(f"{self.out} already holds a run ({', '.join(existing)}); pass --resume to "
                            "continue it or --overwrite to start over")
        if acc.is_main_process:
            if t.overwrite:
                for p in (self.out / f for f in existing):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            self.out.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()

    def _load_data(self) -> None:
        d, t = self.cfg.data, self.cfg.train
        self.prompt_cfg = d.prompt_config()
        if self.train_examples is None:
            self.train_examples = assemble.load_split(d, d.train_split, d.limit_train)
        self.train_examples = list(self.train_examples)[: d.limit_train]
        if self.dev_examples is None and t.eval and d.dev_split and d.path is not None:
            self.dev_examples = assemble.load_split(d, d.dev_split, d.limit_dev)
        self.dev_examples = list(self.dev_examples or [])[: d.limit_dev] if t.eval else []
        if not self.train_examples:
            raise UserError(f"data: no training examples in {d.path} (split {d.train_split!r})")

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.acc
        tok = self.tokenizer or getattr(self.model, "tokenizer", None)
        if tok is None and self.model is not None:
            raise UserError("train(): pass tokenizer= (the model passed in carries none)")
        self.tokenizer = tok = tok or assemble.build_tokenizer(cfg.model, self.train_examples)
        model = self.model if self.model is not None else assemble.build_model(cfg.model, tok, cfg.train.seed, self.prompt_cfg)
        model = assemble.as_trainable(model, cfg.model)
        assemble.prepare_for_training(model, cfg.model, cfg.train.gradient_checkpointing)
        if is_sharded(acc) and hasattr(model, "cache_rho"):
            cache_rho(model)  # before prepare(): the table is still whole
        self.n_trainable, n_total = assemble.count_parameters(model)
        if self.n_trainable == 0:
            raise UserError("nothing to train: every parameter is frozen")
        acc.print(f"model: {type(model).__name__}, {self.n_trainable:,} trainable of {n_total:,} parameters; "
                  f"{len(self.train_examples)} train / {len(self.dev_examples)} dev examples; "
                  f"{self.world} process(es) × batch {self.cfg.train.batch_size} × accumulation {self.ga}")
        self.model = model.train()

    def _build_loaders(self) -> None:
        from torch.utils.data import DataLoader

        from flythinker.data.prompts import TEACHER_FORCED_PADDING, collate

        t = self.cfg.train
        collate_fn = functools.partial(collate, pad_token_id=pad_id(self.tokenizer),
                                       padding_side=TEACHER_FORCED_PADDING)
        train_ds = assemble.EncodedExamples(self.train_examples, self.tokenizer, self.prompt_cfg)
        self.sampler = assemble.EpochSampler(len(train_ds), t.batch_size * self.world * self.ga, t.seed)
        # an own generator: DataLoader iterators would otherwise draw from the global RNG,
        # and a resumed run would then see other dropout masks
        gen = torch.Generator().manual_seed(t.seed)
        workers = self.cfg.data.num_workers
        self.train_dl = DataLoader(train_ds, batch_size=t.batch_size, sampler=self.sampler, collate_fn=collate_fn,
                                   num_workers=workers, persistent_workers=workers > 0, generator=gen)
        self.dev_dl = None
        if self.dev_examples:
            dev_ds = assemble.EncodedExamples(self.dev_examples, self.tokenizer, self.prompt_cfg)
            self.dev_dl = DataLoader(dev_ds, batch_size=t.batch_size, shuffle=False, collate_fn=collate_fn,
                                     num_workers=workers, persistent_workers=workers > 0, generator=gen)
        self.steps_per_epoch = len(self.sampler) // (t.batch_size * self.world * self.ga)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)

    def _build_optimizer(self) -> None:
        from accelerate.utils import DistributedType

        t, acc = self.cfg.train, self.acc
        fsdp = acc.distributed_type == DistributedType.FSDP
        if fsdp:  # FSDP wants the optimizer built on its (sharded) parameters; DeepSpeed wants both at once
            self.model = acc.prepare(self.model)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        gates = [p for n, p in named if n.endswith("fusion.gate")]  # the opt-in latent gate: its own lr
        params = [p for n, p in named if not n.endswith("fusion.gate")]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},  # biases, norms
                  {"params": gates, "weight_decay": 0.0, "lr": self.cfg.model.gate_lr}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=tuple(t.betas), eps=t.eps)
        warmup = t.warmup_steps if t.warmup_steps is not None else round(t.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(
            lr_factor, total=self.total_steps, warmup=warmup, schedule=t.schedule, min_ratio=t.min_lr_ratio))
        # the scheduler is stepped by hand once per optimizer step: accelerate's wrapper would
        # step it once per process
        objs = ([] if fsdp else [self.model]) + [self.optimizer, self.train_dl] + ([self.dev_dl] if self.dev_dl else [])
        prepared = list(acc.prepare(*objs))
        if not fsdp:
            self.model = prepared.pop(0)
        self.optimizer, self.train_dl = prepared[:2]
        self.dev_dl = prepared[2] if self.dev_dl else None

    def _resume(self) -> None:
        import yaml

        acc, cfg = self.acc, self.cfg
        ckpt = latest_checkpoint(self.out) if cfg.train.resume else None
        if ckpt is not None:
            check_same_setup(read_state(ckpt)["config"], cfg.to_dict(), ckpt)
            state = load_checkpoint(acc, ckpt)
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            self.best_dev_loss, self.train_time, self.tokens = state["best_dev_loss"], state["train_time_s"], state["tokens"]
            if state["num_processes"] != self.world:
                acc.print(f"note: checkpoint written by {state['num_processes']} process(es), resuming on {self.world}")
            acc.print(f"resuming from {ckpt} (step {self.step}, epoch {self.epoch + 1})")
        elif cfg.train.resume:
            acc.print(f"note: no complete checkpoint in {self.out}; starting from step 0")
        if acc.is_main_process:
            self.log.truncate(self.step)
            saved = cfg.to_dict()
            saved["train"].update(resume=False, overwrite=False)  # the head line says --resume
            text = yaml.safe_dump(saved, sort_keys=False)
            head = f"# flythinker train {self.out / 'config.yaml'} --out {self.out} --resume\n"
            (self.out / "config.yaml").write_text(head + text, encoding="utf-8")
        acc.wait_for_everyone()

    # --- training -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        from tqdm.auto import tqdm

        acc, t = self.acc, self.cfg.train
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not acc.is_main_process,
                   desc=f"train {self.cfg.model.mode}", dynamic_ncols=True)
        if t.eval_every and self.step == 0:
            self._startup_lam()  # (with a λ warm-up: the first step's λ)
            self._evaluate_step()  # the start: what fine-tuning begins from
        while self.step < self.total_steps and self.epoch < self.epochs:
            self._train_epoch(bar)
            if self.step_in_epoch == self.steps_per_epoch or self.step >= self.total_steps:
                self._evaluate()
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._save()
        bar.close()
        return self._finish()

    def _train_epoch(self, bar) -> None:
        acc, t, model = self.acc, self.cfg.train, self.model
        self.sampler.epoch = self.epoch
        self.sampler.skip = self.step_in_epoch * t.batch_size * self.world * self.ga
        running = torch.zeros(2, dtype=torch.float64, device=acc.device)  # (loss sum, tokens)
        tick = time.perf_counter()
        for batch, items in token_windows(self.train_dl, self.ga, t.loss_normalization):
            self._startup_lam()
            with acc.accumulate(model):  # "tokens": sum / the window's tokens, × ga against accelerate's / ga
                loss = model(**batch).loss if items is None else model(**batch, num_items_in_batch=items).loss * self.ga
                acc.backward(loss)
            running += torch.stack([loss.detach().double(), batch["attention_mask"].sum().double()])
            if not acc.sync_gradients:
                continue
            total = acc.reduce(running, reduction="sum")
            step_loss, tokens = total[0].item() / (self.ga * self.world), int(total[1].item())
            if not math.isfinite(step_loss):
                self._diverged("loss", step_loss)
            if self.step < self.cfg.model.reasoner_first_steps:  # R learns first; G's update is dropped
                for p in acc.unwrap_model(model).generator.parameters():
                    p.grad = None
            norm = acc.clip_grad_norm_(model.parameters(), t.max_grad_norm or float("inf"))
            norm = None if norm is None else float(norm)
            if norm is not None and not math.isfinite(norm):
                self._diverged("gradient norm", norm)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step, self.step_in_epoch = self.step + 1, self.step_in_epoch + 1
            elapsed = time.perf_counter() - tick
            self.train_time, self.tokens = self.train_time + elapsed, self.tokens + tokens
            running.zero_()
            if acc.is_main_process and (self.step % t.log_every == 0 or self.step == self.total_steps):
                self.log.write({"kind": "train", "step": self.step, "epoch": self.epoch, "loss": step_loss, "lr": lr,
                                "grad_norm": norm, "tokens": tokens, "step_time_s": elapsed,
                                "tokens_per_s": tokens / elapsed, "time": time.time(), **self._gate_record()})
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            if t.eval_every and self.step % t.eval_every == 0 and self.step_in_epoch < self.steps_per_epoch \
                    and self.step < self.total_steps:  # (an epoch's end is evaluated anyway)
                self._evaluate_step()
            if self.step >= self.total_steps:
                break  # max_steps reached mid-epoch
            if t.save_every and self.step % t.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                self._save()  # (an epoch's end is saved after its evaluation)
            tick = time.perf_counter()

    def _startup_lam(self, final: bool = False) -> None:
        """λ of the next step under ``model.lam_warmup_steps`` (``final``: the configured λ, for export)."""
        m = self.cfg.model
        if m.mode == "flythinker" and m.lam_warmup_steps:
            ramp = 1.0 if final else min(1.0, (self.step + 1) / m.lam_warmup_steps)
            self.acc.unwrap_model(self.model).fusion.lam = m.lam * ramp

    def _gate_record(self) -> dict:
        fusion = getattr(self.acc.unwrap_model(self.model), "fusion", None)  # the opt-in latent gate's value
        return fusion.gate_record() if fusion is not None else {}

    def _diverged(self, what: str, value: float) -> None:
        last = latest_checkpoint(self.out)
        msg = (f"{what} became {value} at step {self.step + 1} (epoch {self.epoch + 1}); training stopped. "
               + (f"The last good checkpoint is {last} (continue with --resume after lowering train.lr "
                  "or using train.precision=fp32)." if last else "No checkpoint was written yet."))
        if self.acc.is_main_process:
            self.log.write({"kind": "diverged", "step": self.step + 1, "what": what, "value": str(value)})
            plot_curves(self.log.read(), self.out / "curves.png", title=f"{self.cfg.model.mode} (diverged)")
        raise TrainingDiverged(msg)

    def _save(self) -> None:
        state = {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "scheduler": self.scheduler.state_dict(), "best_dev_loss": self.best_dev_loss,
                 "train_time_s": self.train_time, "tokens": self.tokens, "num_processes": self.world,
                 "grad_accum": self.ga, "config": self.cfg.to_dict()}
        save_checkpoint(self.acc, self.out, self.step, state, self.cfg.train.keep_last)

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def dev_loss(self) -> tuple[float, int]:
        """Token-weighted cross-entropy over the dev split (each example counted once)."""
        from flythinker.evaluate.nll import response_nll

        acc, model = self.acc, self.model
        model.eval()
        sums, counts = [], []
        for batch in self.dev_dl:
            s, n = acc.gather_for_metrics(response_nll(model, batch))
            sums.append(s.double().cpu())
            counts.append(n.cpu())
        model.train()
        total, n = torch.cat(sums).sum().item(), int(torch.cat(counts).sum().item())
        return total / max(n, 1), n

    def _evaluate_step(self) -> None:
        """``train.eval_every``: the dev loss logged at this step (the best model is not touched)."""
        if self.dev_dl is None:
            return
        loss, n = self.dev_loss()
        if self.acc.is_main_process:
            lam = getattr(self.acc.unwrap_model(self.model), "lam", None)
            self.log.write({"kind": "eval_step", "step": self.step, "dev_loss": loss, "dev_tokens": n, "lam": lam})
            from tqdm.auto import tqdm

            tqdm.write(f"step {self.step}: dev loss {loss:.4f}")

    def _evaluate(self) -> None:
        if self.dev_dl is None:
            return
        self._startup_lam(final=True)  # the dev loss and best/ of the configured model
        loss, n = self.dev_loss()
        record = {"kind": "eval", "step": self.step, "epoch": self.epoch, "dev_loss": loss, "dev_tokens": n}
        if self.cfg.train.eval_generate and not is_sharded(self.acc):
            if self.acc.is_main_process:
                from flythinker.train.evalgen import generation_metrics

                record.update(generation_metrics(self.acc.unwrap_model(self.model), self.tokenizer,
                                                 self.dev_examples[: self.cfg.train.eval_generate],
                                                 self.prompt_cfg, self.cfg.train.eval_max_new_tokens))
            self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(f"epoch {self.epoch + 1}: dev loss {loss:.4f} ({n} tokens)")  # keeps the bar intact
        if self.acc.is_main_process:
            self.log.write(record)
        if self.best_dev_loss is None or loss < self.best_dev_loss:
            self.best_dev_loss = loss
            export_model(self.acc, self.model, self.out / "best", self.tokenizer)

    def _finish(self) -> TrainResult:
        acc = self.acc
        self._startup_lam(final=True)
        final = export_model(acc, self.model, self.out / "final", self.tokenizer)
        fingerprints = None
        if self.world > 1 and not is_sharded(acc):
            mine = torch.tensor([state_fingerprint(acc.unwrap_model(self.model))], dtype=torch.float64, device=acc.device)
            fingerprints = acc.gather(mine).tolist()
        records = self.log.read() if acc.is_main_process else []
        result = TrainResult(
            out_dir=self.out, final_checkpoint=final or self.out / "final",
            best_checkpoint=self.out / "best" if self.best_dev_loss is not None else None,
            last_checkpoint=latest_checkpoint(self.out), steps=self.step,
            losses=[r["loss"] for r in records if r.get("kind") == "train"],
            dev_losses=[r["dev_loss"] for r in records if r.get("kind") == "eval"],
            best_dev_loss=self.best_dev_loss, train_time_s=self.train_time,
            tokens_per_s=self.tokens / self.train_time if self.train_time else 0.0,
            trainable_parameters=self.n_trainable, replica_fingerprints=fingerprints)
        if acc.is_main_process:
            (self.out / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
            plot_curves(records, self.out / "curves.png", title=f"{self.cfg.model.mode}: {self.out.name}")
            acc.print(f"done: {self.step} steps in {self.train_time:.1f} s ({result.tokens_per_s:,.0f} tokens/s); "
                      f"model in {result.final_checkpoint}")
        acc.wait_for_everyone()
        if self.cfg.train.report_to:  # trackers flush and close (accelerate also ends the process group)
            acc.end_training()
        acc.unwrap_model(self.model, keep_fp32_wrapper=False)  # a caller's model leaves without the autocast wrapper
        return result


def train(cfg: TrainConfig, out_dir, *, model=None, tokenizer=None, train_examples=None,
          dev_examples=None) -> TrainResult:
    """Train per ``cfg`` into the run folder ``out_dir``; returns a :class:`TrainResult`.

    Anything passed in replaces what the config would build: ``model`` (a FlyThinker; for
    ``model.mode: sft`` its generator, or any causal LM, is trained alone), ``tokenizer``,
    ``train_examples`` / ``dev_examples`` (lists of ``flythinker.data.longlamp.Example``).
    Set ``cfg.train.resume`` / ``cfg.train.overwrite`` to continue or replace a previous run.

    >>> cfg = load_config("src/flythinker/configs/tiny_flythinker.yaml")                # doctest: +SKIP
    >>> result = train(cfg, "runs/demo", model=my_flythinker, train_examples=train_set)  # doctest: +SKIP
    >>> FlyThinker.from_pretrained(result.final_checkpoint)                               # doctest: +SKIP
    """
    trainer = Trainer(cfg, out_dir, model, tokenizer, train_examples, dev_examples)
    trainer.setup()
    return trainer.fit()
