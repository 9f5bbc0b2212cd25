"""Predictions for a dataset split: batched, appended as they are made, resumable, shardable.

Launched with ``torchrun``/``accelerate launch``, each process takes every WORLD_SIZE-th
example, writes its own part file, and rank 0 merges the parts in dataset order (checking that
no id is lost or duplicated). Rerunning after a crash skips the ids already written.

Batches are fixed chunks of a shard in dataset order, each with its own sampling seed, so a
resumed run recomputes exactly the batches an uninterrupted run would have — the same tokens,
greedy or seeded sampling.
"""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from flythinker.choices import Backend, DecodeMode, Dtype, Retrieval, value
from flythinker.data import predictions
from flythinker.errors import UserError


@dataclass
class DecodeSettings:
    """Decoding settings for a predictions run (paper: temperature 0.8, top-p 0.95)."""

    max_new_tokens: int = 256
    """Most new tokens per example."""
    do_sample: bool = True
    """Sample (True) or greedy (False)."""
    temperature: float = 0.8
    """Softmax temperature when sampling."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    top_k: int = 0
    """Top-k filter (0 = off)."""
    seed: int = 0
    """Base seed; batch i of a shard samples with seed + i."""
    batch_size: int = 8
    """Examples decoded together (left-padded)."""
    mode: str = "sequential"
    """Decoder: "sequential" (reference) or "concurrent"."""
    backend: str | None = None
    """Concurrent backend (None: the best for the hardware)."""

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise UserError("max_new_tokens and batch_size must be ≥ 1")


@dataclass
class PredictionStats:
    """What a predictions run wrote and how long its decoding took."""

    path: Path
    seconds: float = 0.0
    new_tokens: int = 0  # non-pad generated tokens
    steps: int = 0  # decoding steps (batch columns)
    last_seconds: float = 0.0  # the latest batch's decoding time

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / max(1, self.steps)


def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out if world_size == 1 else out.with_name(f"{out.name}.part{rank}-of-{world_size}")


def generate_predictions(
    model,
    tokenizer,
    examples: list,
    out: str | Path,
    *,
    prompt_cfg=None,
    settings: DecodeSettings | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    extra: dict | None = None,
) -> "PredictionStats":
    """Write ``{"id", "user_id", "prediction"}`` JSONL lines for ``examples`` to ``out``.

    Returns the file this process wrote (``out`` itself when ``world_size == 1``) and the
    decoding time of this call.

    >>> generate_predictions(model, tok, load_examples("data", split="test"), "preds.jsonl",
    ...                      settings=DecodeSettings(do_sample=False))  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from flythinker.data.prompts import PromptConfig

    prompt_cfg = prompt_cfg or PromptConfig()
    settings = settings or DecodeSettings()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = part_path(out, rank, world_size)
    shard = examples[rank::world_size]
    done = _resumable(path, shard)
    batches = [shard[i : i + settings.batch_size] for i in range(0, len(shard), settings.batch_size)]
    stats = PredictionStats(path=path)
    bar = tqdm(total=len(shard), initial=sum(e.id in done for e in shard), desc=f"generate[{rank}]",
               disable=not progress, unit="ex")
    for b, batch in enumerate(batches):
        if all(e.id in done for e in batch):
            continue
        texts, n_tokens = _decode_batch(model, tokenizer, batch, prompt_cfg, settings, seed=settings.seed + b,
                                        stats=stats)
        records = [{"id": e.id, "user_id": e.user_id, "prediction": text.strip(), **(extra or {})}
                   for e, text in zip(batch, texts) if e.id not in done]
        done.update((r["id"], r) for r in records)
        predictions.append_records(path, records)
        bar.update(len(records))
        bar.set_postfix(tok_s=f"{n_tokens / max(stats.last_seconds, 1e-9):.0f}")
    bar.close()
    return stats


def _resumable(path: Path, shard: list) -> dict[str, dict]:
    """The records already in ``path``; refuse a file that holds ids of another dataset."""
    done = predictions.read_records(path)
    shard_ids = {e.id for e in shard}
    foreign = [i for i in done if i not in shard_ids]
    if foreign:  # resuming into another dataset's file would mix two runs
        raise UserError(f"{path}: holds {len(foreign)} prediction(s) for ids not among the {len(shard)} examples "
                        f"being predicted (e.g. {', '.join(map(repr, foreign[:3]))}); it belongs to another "
                        "dataset, split or --limit: pass another --out")
    return done


def _decode_batch(model, tokenizer, batch, prompt_cfg, settings: DecodeSettings, seed: int,
                  stats: "PredictionStats") -> tuple[list[str], int]:
    """Decode one batch (left-padded prompts); returns its texts and non-pad token count."""
    from flythinker.data.prompts import generation_batch
    from flythinker.lm import eos_ids

    device = next(model.generator.parameters()).device
    enc = {k: v.to(device) for k, v in generation_batch(batch, tokenizer, prompt_cfg, tokenizer.pad_token_id).items()}
    t0 = time.perf_counter()
    new = model.generate(
        enc.pop("input_ids"), attention_mask=enc.pop("attention_mask"), **enc,
        max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, temperature=settings.temperature,
        top_p=settings.top_p, top_k=settings.top_k, seed=seed, eos_token_id=eos_ids(model.generator, tokenizer),
        pad_token_id=tokenizer.pad_token_id, mode=settings.mode, backend=settings.backend,
    )  # (B, T_new)
    stats.last_seconds = time.perf_counter() - t0
    n_tokens = int((new != tokenizer.pad_token_id).sum())
    stats.seconds += stats.last_seconds
    stats.new_tokens += n_tokens
    stats.steps += new.shape[1]
    return tokenizer.batch_decode(new, skip_special_tokens=True), n_tokens


def merge_parts(out: str | Path, examples: list, world_size: int) -> Path:
    """Merge the part files of a sharded run into ``out``, in dataset order; every id once."""
    out = Path(out)
    records: dict[str, dict] = {}
    for rank in range(world_size):
        part = part_path(out, rank, world_size)
        for rid, rec in predictions.read_records(part).items():
            if rid in records:
                raise RuntimeError(f"id {rid!r} was written by two processes")
            records[rid] = rec
    missing = [e.id for e in examples if e.id not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} examples have no prediction (e.g. {missing[:3]})")
    extra = set(records) - {e.id for e in examples}
    if extra:
        raise RuntimeError(f"{len(extra)} predictions match no example (e.g. {sorted(extra)[:3]})")
    predictions.write_records(out, [records[e.id] for e in examples])
    for rank in range(world_size):
        part_path(out, rank, world_size).unlink()
    return out


def _merge_shards(out: Path, examples: list, rank: int, world: int) -> None:
    """Under torchrun: rank 0 merges every process's part file once all have written theirs."""
    import torch

    if world > 1:
        torch.distributed.barrier()
        if rank == 0:
            merge_parts(out, examples, world)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextmanager
def _fallbacks_noted(rank: int):
    """Print each reason a decoder gave for handing batches to the reference loop, once; every other
    warning is shown as usual."""
    from flythinker.decoding.loop import FallbackWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        try:
            yield
        finally:
            notes = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, FallbackWarning))
            for w in caught:
                if not issubclass(w.category, FallbackWarning):
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for note in notes if rank == 0 else ():
        print(f"note: {note}")


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def generate_command(
    model: Path = typer.Option(..., "--model", help="A FlyThinker folder or a plain transformers model folder (SFT)."),
    data: Path = typer.Option(..., "--data", help="LongLaMP-format file or folder."),
    out: Path = typer.Option(..., "--out", help="Predictions JSONL to write (appended; rerun to resume)."),
    split: str = typer.Option("test", "--split", help="Split to predict (train/dev/test) when --data is a folder."),
    limit: int = typer.Option(0, "--limit", help="Only the first N examples (0 = all)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples decoded together."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Most new tokens per example."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy decoding instead of sampling."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature (paper: 0.8)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling threshold (paper: 0.95)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k filter (0 = off)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    mode: DecodeMode = typer.Option(
        "sequential", "--mode", help="sequential (reference), concurrent, captured (static caches; CUDA graphs on a GPU) or shared_base."
    ),
    backend: Backend = typer.Option(None, "--backend", help="Concurrent backend (default: best available)."),
    retrieval: Retrieval = typer.Option(
        None, "--retrieval",  help="Profile in the prompt: none, all, bm25, recent (default: as the model was trained)."
    ),
    k: int = typer.Option(None, "--k", help="Profile items kept by bm25 / recent (default: as trained)."),
    dtype: Dtype = typer.Option(None, "--dtype", help="Model dtype."),
    device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the folder."),
) -> None:
    """Write predictions JSONL for a dataset split with a trained model.

    Under ``torchrun --nproc_per_node N`` or ``accelerate launch`` the examples are sharded
    across processes and merged in dataset order at the end.
    """
    import torch

    from flythinker.auto import load_for_mode
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompt_settings import describe_prompt_config, model_prompt_config
    from flythinker.devices import use_device

    mode, backend, retrieval, dtype = value(mode), value(backend), value(retrieval), value(dtype)
    rank, world, _ = _dist_env()
    device = use_device(device, say=print if rank == 0 else None)
    settings = DecodeSettings(
        max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature, top_p=top_p,
        top_k=top_k, seed=seed, batch_size=batch_size, mode=mode, backend=backend,
    )
    prompt_cfg, source = model_prompt_config(model, overrides={"retrieval": retrieval, "k": k})
    if rank == 0:
        print(f"prompts: {describe_prompt_config(prompt_cfg)}; from {source}")
    examples = load_examples(data, split=split, limit=limit or None)
    if not examples:
        raise UserError(f"--data {data}: no examples in split {split!r}")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    net, tok = load_for_mode(model, mode, dtype, device, trust_remote_code, say=print if rank == 0 else None)
    with _fallbacks_noted(rank):
        stats = generate_predictions(net, tok, examples, out, prompt_cfg=prompt_cfg, settings=settings,
                                     rank=rank, world_size=world)
    _merge_shards(out, examples, rank, world)
    if rank == 0:
        print(f"wrote {len(examples)} predictions to {out} "
              f"({stats.ms_per_step:.1f} ms per decoding step on rank 0)")
