"""The real model: SmolLM2-135M-Instruct as pulled by `flythinker models pull` (.ci/run pulls it
first). Skipped where it has not been pulled; a few minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch
from tiny_models import GITCOMMITS
from torch.testing import assert_close

pytestmark = pytest.mark.real
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def folder():
    from flythinker.apps.models import present

    path = present().get(NAME)
    if path is None:
        pytest.skip(f"{NAME} not pulled (flythinker models pull {NAME})")
    return path


@pytest.fixture(scope="module")
def pair(folder):
    from flythinker import FlyThinker
    from flythinker.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(folder)
    g, r = load_causal_lm(folder), load_causal_lm(folder)
    return FlyThinker(g, r, lam=0.5, generator_tokenizer=tok, reasoner_tokenizer=tok).eval(), tok


@pytest.fixture(scope="module")
def prompt_ids(pair):
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, collate, encode_for_generation
    from flythinker.lm import pad_id

    _, tok = pair
    exs = load_examples(GITCOMMITS / "sample" / "user_based", split="test", limit=2)
    cfg = PromptConfig(retrieval="recent", k=1, profile_tokens=64, query_tokens=48)
    batch = collate([encode_for_generation(e, tok, cfg) for e in exs], pad_token_id=pad_id(tok))
    return batch["input_ids"], batch["attention_mask"]


def test_the_pulled_folder_is_a_verified_tied_llama_with_chatml(folder):
    from flythinker.apps.models import REGISTRY, verify_folder
    from flythinker.auto import load_model

    info = verify_folder(folder, REGISTRY[NAME])
    assert info["parameters"] == 134_515_008 and info["tie_word_embeddings"]
    model, tok = load_model(folder)
    assert type(model.generator).__name__ == "LlamaForCausalLM" and model.lam == 0.0
    assert model.generator.get_output_embeddings().weight is model.generator.get_input_embeddings().weight
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id and tok.chat_template


def test_greedy_is_the_teacher_forced_argmax_and_lambda_zero_is_generate(pair, prompt_ids):
    from flythinker import FlyThinker

    model, tok = pair
    ids, mask = prompt_ids
    new = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    full, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    logits = model(input_ids=full, attention_mask=full_mask).logits
    assert torch.equal(logits[:, ids.shape[1] - 1 : -1].argmax(-1), new)
    sft = FlyThinker(model.generator, model.reasoner, lam=0.0)
    hf = model.generator.generate(
        ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
    )[:, ids.shape[1] :]
    ours = sft.generate(ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(ours[:, : hf.shape[1]], hf)


def test_concurrent_gives_the_sequential_tokens(pair, prompt_ids):
    from flythinker.decoding.concurrent import ConcurrentDecoder

    model, _ = pair
    ids, mask = prompt_ids
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.95, seed=0)
    threads = torch.get_num_threads()
    with ConcurrentDecoder(model, backend="shm", threads_per_model=1) as dec:
        got = dec.generate(ids, attention_mask=mask, **kw)
    torch.set_num_threads(1)
    try:
        want = model.generate(ids, attention_mask=mask, **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, want)


def test_the_base_model_reads_the_profile(folder):
    from flythinker.apps.probe import run_probe

    result = run_probe(folder, GITCOMMITS / "user_based", split="test", limit=8, bootstrap=0)
    nll = result["nll"]
    assert nll["own"] < nll["none"] and result["paired"]["own-none"]["win_rate"] >= 0.5


def test_lora_bf16_training_steps_and_the_merged_export(pair, tmp_path):
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.train.config import TrainConfig, from_dict
    from flythinker.train.trainer import train

    model, tok = pair
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    prompt = dict(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=32)
    cfg = from_dict(
        TrainConfig,
        {
            "model": {
                "mode": "flythinker",
                "lam": 0.1,
                "generator": {"path": "unused", "lora": lora},
                "reasoner": {"path": "unused", "lora": lora},
                "tokenizer": "unused",
            },
            "data": {"prompt": prompt},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-4, "precision": "bf16", "eval": False, "save_every": 0},
        },
    )
    examples = load_examples(GITCOMMITS / "sample" / "user_based", split="train", limit=4)
    result = train(cfg, tmp_path / "run", model=model, tokenizer=tok, train_examples=examples)
    assert len(result.losses) == 2 and all(3 < x < 12 for x in result.losses)
    loaded, _ = load_model(result.final_checkpoint)
    assert loaded.generator.get_output_embeddings().weight is loaded.generator.get_input_embeddings().weight
    ids = torch.tensor([tok("<|im_start|>user\nhello<|im_end|>\n")["input_ids"]])
    assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_continuous_batching_gives_each_row_its_alone_tokens_and_serves_a_load(pair):
    """The server's running batch on the real pair (a row joins mid-decode, the other leaves),
    then 4 clients streaming for a fixed 6 s through the HTTP server: no errors, all answered."""
    import tempfile
    from pathlib import Path

    from flythinker.apps.bench.serve import _level, _Server
    from flythinker.apps.serve.app import make_app
    from flythinker.apps.serve.engine import Engine
    from flythinker.apps.serve.store import ProfileStore
    from flythinker.data.prompts import PromptConfig
    from flythinker.decoding import make_stepper

    model, tok = pair
    prompts = [
        tok("Write a commit message for a parser fix.")["input_ids"],
        tok("Summarize: the merge machinery now keeps going after a conflict in a submodule.")["input_ids"],
    ]
    batch, out, logits = make_stepper(model, "concurrent"), [[], []], None
    logits = batch.add_prompts([prompts[0]], tok.pad_token_id)
    rows = [0]
    for step in range(10):
        if step == 3:
            logits = torch.cat([logits, batch.add_prompts([prompts[1]], tok.pad_token_id)])
            rows.append(1)
        tokens = logits.argmax(-1)
        for i, t in zip(rows, tokens.tolist()):
            out[i].append(t)
        if step == 6:  # row 0 leaves
            batch.keep(torch.tensor([1]))
            rows, tokens = [1], tokens[1:]
        logits = batch.step(tokens)
    batch.close()
    for i, n in ((0, 7), (1, 7)):
        ids = torch.tensor([prompts[i]])
        alone = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            mode="sequential",
            eos_token_id=[],
            pad_token_id=tok.pad_token_id,
        )[0].tolist()
        assert out[i] == alone, i

    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(model, tok, max_batch=4)
        server = _Server(make_app(model, tok, ProfileStore(Path(tmp) / "p.db"), PromptConfig(), engine=engine))
        try:
            body = {
                "prompt": "Write the body of the commit 'parser: skip blank lines'.",
                "max_tokens": 8,
                "temperature": 0.8,
                "top_p": 0.95,
                "stream": True,
            }
            r = _level(server.port, clients=4, per_client=1, body=body, duration_s=6.0)
        finally:
            server.close()
            engine.close()
    assert r["errors"] == 0, r["error_samples"]
    assert r["answered"] == r["requests"] >= 4 and r["tokens"] > 0 and r["p95_latency_s"] >= r["p50_latency_s"]


def test_a_reasoner_cut_to_its_first_15_layers_is_the_base_stopped_there_and_decodes_exactly(folder, pair, prompt_ids):
    """``model.reasoner.num_layers=15``: half of SmolLM2's 30 layers, loaded quietly, equal to the
    full model's hidden state after layer 15 (with the final norm); concurrent = sequential."""
    from flythinker import FlyThinker
    from flythinker.decoding.concurrent import ConcurrentDecoder
    from flythinker.loading import load_causal_lm

    _, tok = pair  # (its models may carry another test's LoRA adapters: load fresh ones)
    full, cut = load_causal_lm(folder).eval(), load_causal_lm(folder, num_layers=15).eval()
    ids, mask = prompt_ids
    with torch.no_grad():
        want = full.model.norm(full(ids, attention_mask=mask, output_hidden_states=True).hidden_states[15])
        got = cut(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert cut.config.num_hidden_layers == 15 and torch.equal(got, want)
    model = FlyThinker(full, cut, lam=0.5, generator_tokenizer=tok, reasoner_tokenizer=tok).eval()
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.95, seed=0)
    with ConcurrentDecoder(model, backend="threads") as dec:
        concurrent = dec.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(concurrent, model.generate(ids, attention_mask=mask, **kw))
