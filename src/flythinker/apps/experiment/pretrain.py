"""A tiny base LM pre-trained on the gitcommits corpus: the stand-in for a pretrained Qwen.

The paper fine-tunes pretrained Qwen2.5 models; nothing can be downloaded here, so the small-scale
reproduction first pre-trains a small Qwen2 (same architecture family) as a plain language model
on the git/git commit messages of ``corpus.jsonl.gz``, then fine-tunes every method from it.

Leakage is the pitfall: the corpus holds *every* commit, including the ones the benchmark asks to
write. :func:`filtered_corpus` drops

* every commit that is an output of any dev/test split (ids are ``"git-" + sha[:12]``), and
* every commit of the held-out dev/test authors of the user-based split (user ids are
  ``"git-u" + sha1(author)[:10]``), so those authors are truly unseen.

The tokenizer (byte-level BPE, :func:`flythinker.data.tokenizer.train_tokenizer`) is trained on
the same filtered texts. Output: a standard transformers folder (safetensors + tokenizer) that
``model.generator.path`` / ``model.reasoner.path`` of a training config load.

    >>> from flythinker.apps.experiment.pretrain import PretrainConfig, pretrain
    >>> pretrain(PretrainConfig(hidden_size=128, num_layers=4, steps=600),
    ...          "../shared/data/gitcommits", "runs/base-128")  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flythinker.errors import UserError

EVAL_SPLITS = ("dev", "test")
SPLIT_FOLDERS = ("user_based", "temporal")


@dataclass
class PretrainConfig:
    """Size and recipe of one base LM (a Qwen2 built from numbers, trained from scratch)."""

    hidden_size: int = 128
    """Width d of the model."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in Qwen2)."""
    vocab_size: int = 4096
    """BPE vocabulary size (trained on the filtered corpus)."""
    block_size: int = 256
    """Tokens per training sequence (commits are concatenated, EOS between them)."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    steps: int = 600
    """Optimizer steps."""
    lr: float = 2e-3
    """Peak learning rate (linear warmup over 5% of the steps, cosine decay to 10%)."""
    seed: int = 0
    """Weight initialisation and batch order."""
    max_positions: int = 1024
    """RoPE table size of the saved model (fine-tuning prompts are longer than block_size)."""
    max_commits: int | None = None
    """Pre-train on the first N filtered commits only (quick tests); None: all."""

    def __post_init__(self):
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "vocab_size",
            "block_size",
            "batch_size",
            "steps",
            "max_positions",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"pretrain.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise UserError("pretrain.num_heads must divide hidden_size and num_kv_heads must divide num_heads")


def example_id(sha: str) -> str:
    """The benchmark's example id of a commit (``build_gitcommits.py``: project + sha[:12])."""
    return f"git-{sha[:12]}"


def author_user_id(author: str) -> str:
    """The benchmark's user id of an author name (``build_gitcommits.py``'s ``user_id_of``)."""
    return "git-u" + hashlib.sha1(author.encode("utf-8")).hexdigest()[:10]


def held_out(data_root: str | Path) -> tuple[set[str], set[str]]:
    """(example ids that are dev/test outputs in any split, user-based dev/test user ids)."""
    root = Path(data_root)
    ids, users = set(), set()
    for folder in SPLIT_FOLDERS:
        for split in EVAL_SPLITS:
            file = root / folder / f"{split}.json"
            if not file.is_file():
                raise UserError(f"{file}: missing (needed to exclude evaluation commits from pretraining)")
            for ex in json.loads(file.read_text(encoding="utf-8")):
                ids.add(ex["id"])
                if folder == "user_based":
                    users.add(ex["user_id"])
    return ids, users


def filtered_corpus(data_root: str | Path) -> tuple[list[dict], dict]:
    """Corpus commits safe to pre-train on, and counts of what was dropped.

    >>> commits, stats = filtered_corpus("../shared/data/gitcommits")  # doctest: +SKIP
    >>> stats["dropped_eval_outputs"] > 0 and stats["dropped_heldout_authors"] > 0  # doctest: +SKIP
    True
    """
    root = Path(data_root)
    file = root / "corpus.jsonl.gz"
    if not file.is_file():
        raise UserError(f"{file}: corpus not found")
    ids, users = held_out(root)
    kept, n_out, n_author, total = [], 0, 0, 0
    with gzip.open(file, "rt", encoding="utf-8") as f:
        for line in f:
            c = json.loads(line)
            total += 1
            if author_user_id(c["author"]) in users:
                n_author += 1
            elif example_id(c["sha"]) in ids:
                n_out += 1
            else:
                kept.append(c)
    stats = {
        "corpus": total,
        "kept": len(kept),
        "dropped_eval_outputs": n_out,
        "dropped_heldout_authors": n_author,
        "heldout_ids": len(ids),
        "heldout_users": len(users),
    }
    return kept, stats


def commit_text(commit: dict) -> str:
    """One pretraining document: subject, blank line, body (the shape of a commit message)."""
    return f"{commit['subject']}\n\n{commit['body']}"


def token_blocks(texts: list[str], tokenizer, block_size: int):
    """All texts tokenized, joined with EOS and cut into (N, block_size) rows."""
    import torch

    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += row + [tokenizer.eos_token_id]
    n = len(ids) // block_size
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size)  # (N, block)


def pretrain(cfg: PretrainConfig, data_root: str | Path, out_dir: str | Path, *, tokenizer=None, log=print) -> Path:
    """Pre-train one base LM on the filtered corpus; writes ``out_dir`` (model + tokenizer +
    ``pretrain.json``) and returns it. An existing finished folder is reused (resumable matrix).

    ``tokenizer`` shares one BPE between several base sizes (G and a smaller R must share one
    vocabulary); None trains it here on the filtered corpus.

    >>> pretrain(PretrainConfig(steps=10), "../shared/data/gitcommits", "runs/base")  # doctest: +SKIP
    """
    from flythinker.tiny import qwen2_config, random_lm

    out = Path(out_dir)
    if (out / "pretrain.json").is_file() and (out / "model.safetensors").is_file():
        return out
    commits, stats = filtered_corpus(data_root)
    texts = [commit_text(c) for c in commits[: cfg.max_commits]]
    if tokenizer is None:
        tokenizer = corpus_tokenizer(texts, cfg.vocab_size)
    blocks = token_blocks(texts, tokenizer, cfg.block_size)  # (N, block)
    mcfg = qwen2_config(
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        None,
        len(tokenizer),
        max_positions=cfg.max_positions,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    model = random_lm(mcfg, cfg.seed).train()
    t0 = time.perf_counter()
    held_loss, last_loss = _fit_blocks(model, blocks, cfg, log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "config": asdict(cfg),
        "corpus": stats,
        "tokens": int(blocks.numel()),
        "final_loss": last_loss,
        "heldout_loss": held_loss,
        "seconds": time.perf_counter() - t0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"pretrained {out}: held-out loss {held_loss:.3f}, {info['parameters']:,} parameters")
    return out


def _fit_blocks(model, blocks, cfg: PretrainConfig, log) -> tuple[float, float]:
    """Plain LM training on token blocks (not prompts and responses, hence not the Trainer), with
    the Trainer's schedule (``lr_factor``: 5% warmup, cosine to 10%); returns (held-out, last) loss."""
    import torch

    from flythinker.train.schedule import lr_factor

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(cfg.seed)
    n_hold = max(cfg.batch_size, len(blocks) // 50)  # 2% of blocks: a held-out loss for the log
    perm = torch.randperm(len(blocks), generator=g)
    held, train_blocks = blocks[perm[:n_hold]], blocks[perm[n_hold:]]
    order, pos, losses, t0 = torch.randperm(len(train_blocks), generator=g), 0, [], time.perf_counter()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(train_blocks), generator=g), 0
        batch = train_blocks[order[pos : pos + cfg.batch_size]]  # (B, block)
        pos += cfg.batch_size
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, max(1, cfg.steps // 20), "cosine", 0.1)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step == cfg.steps - 1:
            log(
                f"pretrain d={cfg.hidden_size} step {step + 1}/{cfg.steps} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    model.eval()
    with torch.no_grad():
        held_loss = sum(
            model(input_ids=held[i : i + 16], labels=held[i : i + 16]).loss.item() for i in range(0, len(held), 16)
        ) / math.ceil(len(held) / 16)
    return held_loss, losses[-1]


def corpus_tokenizer(texts: list[str], vocab_size: int):
    """The shared BPE of all base models, trained (and cached) on the filtered corpus texts."""
    from flythinker.data.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size)


def pretrain_bases(
    sizes: dict[str, PretrainConfig], data_root: str | Path, out_dir: str | Path, log=print
) -> dict[str, Path]:
    """Pre-train several base sizes that share one tokenizer: ``{"g": cfg, "r_small": cfg}`` →
    ``{"g": out_dir/g, ...}``.

    >>> pretrain_bases({"base": PretrainConfig()}, "../shared/data/gitcommits", "runs/bases")  # doctest: +SKIP
    """
    if not sizes:
        raise UserError("pretrain: no base model sizes given")
    vocab = {c.vocab_size for c in sizes.values()}
    if len(vocab) != 1:
        raise UserError(f"pretrain: all base models must share one vocabulary size, got {sorted(vocab)}")
    vocab_size = vocab.pop()
    out, tokenizer, paths = Path(out_dir), None, {}
    for name, cfg in sizes.items():
        folder = out / name
        if not (folder / "pretrain.json").is_file():
            if tokenizer is None:
                commits, _ = filtered_corpus(data_root)
                limit = max((c.max_commits or len(commits)) for c in sizes.values())
                tokenizer = corpus_tokenizer([commit_text(c) for c in commits[:limit]], vocab_size)
        paths[name] = pretrain(cfg, data_root, folder, tokenizer=tokenizer, log=log)
    return paths
