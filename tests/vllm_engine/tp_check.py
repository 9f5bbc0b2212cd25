"""Tensor parallelism 2 against the reference decoder, in a process of its own (vLLM's TP workers
are spawned): ``python tp_check.py OUT_DIR`` prints ``EXACT`` or the mismatch."""

from __future__ import annotations

import sys
from pathlib import Path


def main(root: Path) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm_pairs import make_pair, prompts, reference_greedy

    model, folder = make_pair(root, "llama", "llama", 256, 128, 0.5)
    batch, n = prompts((1, 7, 23, 40)), 8
    llm = LLM(
        model=str(folder),
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        skip_tokenizer_init=True,
        max_num_batched_tokens=16,
        max_num_seqs=8,
        kv_cache_memory_bytes=64 << 20,
        tensor_parallel_size=2,
    )
    params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
    got = [list(o.outputs[0].token_ids) for o in outs]
    want = [reference_greedy(model, p, n) for p in batch]
    print("EXACT" if got == want else f"MISMATCH {got} != {want}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]))
