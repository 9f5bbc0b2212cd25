"""SmolLM2-shaped models through every path, in the fast suite: a random Llama with tied input and
output embeddings, a tokenizer whose EOS is <|im_end|> and which has no pad token, ChatML prompts
with the profile in the user turn, left padding. (tests/real/ runs the same on the real model.)"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import GITCOMMITS, left_padded_batch, tiny_llama
from torch.testing import assert_close

from flythinker import FlyThinker
from flythinker.decoding.concurrent import ConcurrentDecoder
from flythinker.fusion import embedding_norm

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def pair(lam=0.5, vocab=97):
    return FlyThinker(tiny_llama(vocab=vocab, seed=0), tiny_llama(vocab=vocab, seed=1), lam=lam).eval()


@pytest.fixture(scope="module")
def chat_tokenizer(sample_tokenizer):
    tok = copy.deepcopy(sample_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token, tok.pad_token, tok.chat_template = "<|im_end|>", None, CHATML
    assert tok.pad_token_id is None
    return tok


def test_tied_embeddings_rho_is_read_from_the_input_table():
    model = pair()
    g = model.generator
    assert g.get_output_embeddings().weight is g.get_input_embeddings().weight
    assert model.rho().item() == pytest.approx(embedding_norm(g.get_input_embeddings().weight).item())


def test_greedy_decoding_is_the_teacher_forced_argmax_with_left_padding():
    model = pair()
    ids, mask = left_padded_batch([5, 9], seed=4)
    new = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])  # (B, 8)
    full, full_mask = torch.cat([ids, new], 1), torch.cat([mask, torch.ones_like(new)], 1)
    logits = model(input_ids=full, attention_mask=full_mask).logits  # (B, T + 8, V)
    assert torch.equal(logits[:, ids.shape[1] - 1 : -1].argmax(-1), new)


@pytest.mark.parametrize("backend", ["threads", "shm"])
def test_concurrent_equals_sequential_greedy_and_sampled(backend):
    model = pair()
    ids, mask = left_padded_batch([4, 7, 6], seed=5)
    threads = torch.get_num_threads()
    with ConcurrentDecoder(model, backend=backend, threads_per_model=1) as dec:
        for kw in ({}, {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "seed": 3}):
            got = dec.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[2], **kw)
            torch.set_num_threads(1)
            try:
                want = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[2], **kw)
            finally:
                torch.set_num_threads(threads)
            assert torch.equal(got, want)


def test_lambda_zero_is_the_plain_model_and_save_load_keeps_the_tie(tmp_path):
    model = pair()
    ids, mask = left_padded_batch([6, 3], seed=6)
    sft = FlyThinker(model.generator, model.reasoner, lam=0.0)
    hf = model.generator.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )[:, ids.shape[1] :]
    assert torch.equal(sft.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=[], pad_token_id=0), hf)
    model.save_pretrained(tmp_path / "m")
    loaded = FlyThinker.from_pretrained(tmp_path / "m")
    g = loaded.generator
    assert g.get_output_embeddings().weight is g.get_input_embeddings().weight
    real = mask.bool()  # pad positions are masked garbage (and differ between eager and sdpa attention)
    assert_close(
        loaded(input_ids=ids, attention_mask=mask).logits[real], model(input_ids=ids, attention_mask=mask).logits[real]
    )


def test_chat_prompts_lora_bf16_checkpointing_train_export_and_generate(chat_tokenizer, tmp_path):
    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.data.prompts import PromptConfig, encode_for_generation, encode_for_training
    from flythinker.train.config import TrainConfig, from_dict
    from flythinker.train.trainer import train

    tok = chat_tokenizer
    data = GITCOMMITS / "sample" / "user_based"
    examples = load_examples(data, split="train", limit=6)
    prompt = dict(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=32)
    feats = encode_for_training(examples[0], tok, PromptConfig(**prompt))
    text = tok.decode(feats["input_ids"])
    assert text.startswith("<|im_start|>system") and "<|im_start|>user\n### Profile" in text
    assert feats["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>") and feats["labels"][-1] != -100
    model = pair(lam=0.5, vocab=len(tok))
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    cfg = from_dict(
        TrainConfig,
        {
            "model": {
                "mode": "flythinker",
                "lam": 0.5,
                "generator": {"path": "unused", "lora": lora},
                "reasoner": {"path": "unused", "lora": lora},
                "tokenizer": "unused",
            },
            "data": {"prompt": prompt},
            "train": {
                "max_steps": 2,
                "batch_size": 2,
                "lr": 1e-2,
                "precision": "bf16",
                "gradient_checkpointing": True,
                "eval": False,
                "save_every": 0,
            },
        },
    )
    result = train(cfg, tmp_path / "run", model=model, tokenizer=tok, train_examples=examples)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    loaded, loaded_tok = load_model(result.final_checkpoint)
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert loaded.generator.get_output_embeddings().weight is loaded.generator.get_input_embeddings().weight
    ids, mask = left_padded_batch([5, 8], vocab=len(tok), seed=7)
    model.eval()
    real = mask.bool()  # the merged export is the adapted model (at the real, unpadded positions)
    assert "_original_forward" not in vars(model)  # train() took accelerate's bf16 autocast wrapper off again
    assert_close(
        loaded(input_ids=ids, attention_mask=mask).logits[real],
        model(input_ids=ids, attention_mask=mask).logits[real],
        atol=1e-5,
        rtol=1e-5,
    )
    assert loaded_tok.pad_token_id == loaded_tok.eos_token_id  # EOS pads where there is no pad token
    test = load_examples(data, split="test", limit=3)
    assert (
        encode_for_generation(test[0], loaded_tok, PromptConfig(**prompt))[-3:]
        == loaded_tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:]
    )
    stats = generate_predictions(
        loaded,
        loaded_tok,
        test,
        tmp_path / "p.jsonl",
        prompt_cfg=PromptConfig(**prompt),
        settings=DecodeSettings(max_new_tokens=5, batch_size=3, do_sample=False, mode="concurrent"),
        progress=False,
    )
    assert stats.steps >= 1 and len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


def test_full_fine_tuning_of_both_tied_models_exports_them_tied(chat_tokenizer, tmp_path):
    from flythinker.auto import load_model
    from flythinker.data.longlamp import load_examples
    from flythinker.train.config import TrainConfig, from_dict
    from flythinker.train.trainer import train

    tok = chat_tokenizer
    model = pair(lam=0.5, vocab=len(tok))
    before = model.generator.get_input_embeddings().weight.detach().clone()
    cfg = from_dict(
        TrainConfig,
        {
            "model": {
                "mode": "flythinker",
                "lam": 0.5,
                "generator": {"path": "unused"},
                "reasoner": {"path": "unused"},
                "tokenizer": "unused",
            },
            "data": {"prompt": dict(retrieval="recent", k=1, profile_tokens=48, query_tokens=32, target_tokens=32)},
            "train": {"max_steps": 2, "batch_size": 2, "lr": 1e-2, "eval": False, "save_every": 0},
        },
    )
    examples = load_examples(GITCOMMITS / "sample" / "user_based", split="train", limit=4)
    train(cfg, tmp_path / "run", model=model, tokenizer=tok, train_examples=examples)
    g = model.generator
    assert not torch.equal(g.get_input_embeddings().weight, before)  # the shared table itself was trained
    assert g.get_output_embeddings().weight is g.get_input_embeddings().weight
    loaded, _ = load_model(tmp_path / "run" / "final")
    for lm in (loaded.generator, loaded.reasoner):
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert_close(loaded.generator.get_input_embeddings().weight, g.get_input_embeddings().weight)
    assert loaded.rho().item() == pytest.approx(model.rho().item())
