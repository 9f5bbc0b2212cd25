"""One model per process: G and R exchange one token and one latent per step (torch.distributed).

Two ways to run it:

* under torchrun, 2 ranks (rank 0 = G, rank 1 = R; NCCL on GPUs, also across nodes, or gloo)::

      torchrun --nproc-per-node 2 -m flythinker.decoding.distributed runs/my-model --prompt "..."

  or from your own script, on every rank::

      decoder = launch(model)   # R's rank serves here until G's rank closes the decoder
      if decoder is not None:
          with decoder:
              new = model.generate(ids, max_new_tokens=256, mode="concurrent", backend=decoder)

* ``model.generate(mode="concurrent", backend="gloo")`` on CPU starts the R worker process
  itself (dist_link.py; a private gloo group: the default process group is left alone).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from flythinker.decoding.concurrent import ConcurrentDecoder
from flythinker.decoding.dist_link import DistLink
from flythinker.decoding.worker import RemoteReasoner, serve
from flythinker.errors import UserError
from flythinker.lm import device_of


# --- torchrun: one rank per model ---------------------------------------------------------------
def launch(model, group=None, generator_rank: int = 0, reasoner_rank: int = 1):
    """Call on every rank after ``dist.init_process_group``. R's rank serves R's steps and returns
    None once G's rank closes its decoder; G's rank gets a ConcurrentDecoder to decode with.

    Each rank needs its own half on its device (G on ``generator_rank``, R on ``reasoner_rank``);
    the other half is never run there.

    >>> decoder = launch(model)  # doctest: +SKIP
    >>> if decoder is not None:  # doctest: +SKIP
    ...     with decoder:
    ...         new = model.generate(ids, max_new_tokens=64, mode="concurrent", backend=decoder)
    """
    if not dist.is_initialized():
        raise UserError("torch.distributed is not initialised: run under torchrun and call dist.init_process_group()")
    rank = dist.get_rank()
    if rank == reasoner_rank:
        link = DistLink(generator_rank, device_of(model.reasoner), group=group)
        serve(link, model)
        return None
    if rank != generator_rank:
        raise UserError(f"rank {rank} has no part: G runs on rank {generator_rank}, R on rank {reasoner_rank}")
    link = DistLink(reasoner_rank, device_of(model.generator), group=group)
    return ConcurrentDecoder.around(model, RemoteReasoner(link), dist.get_backend(group))


def main(argv: list[str] | None = None) -> None:
    """``torchrun --nproc-per-node 2 -m flythinker.decoding.distributed MODEL_DIR --prompt TEXT``."""
    import argparse
    import os

    from transformers import TextStreamer

    from flythinker import FlyThinker

    p = argparse.ArgumentParser(prog="flythinker.decoding.distributed", description=main.__doc__)
    p.add_argument("model", help="a folder written by FlyThinker.save_pretrained")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--dtype", default=None, help="e.g. bfloat16")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="sample with this seed (default: greedy)")
    args = p.parse_args(argv)

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    try:
        rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        model = FlyThinker.from_pretrained(args.model, dtype=args.dtype).eval()
        (model.reasoner if rank == 1 else model.generator).to(device)
        model.fusion.to(device)
        decoder = launch(model)
        if decoder is not None:
            if model.tokenizer is None:
                raise UserError(f"{args.model}: no tokenizer saved with the model")
            with decoder:
                for prompt in args.prompt:
                    ids = model.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
                    model.generate(
                        ids,
                        max_new_tokens=args.max_new_tokens,
                        do_sample=args.seed is not None,
                        temperature=args.temperature,
                        top_p=args.top_p,
                        seed=args.seed,
                        streamer=TextStreamer(model.tokenizer, skip_prompt=True),
                        mode="concurrent",
                        backend=decoder,
                    )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
