"""Any causal LM a user brings: a matrix of transformers' decoder families (tiny random models of
one shape, ``flythinker.tiny.family_config``), each held to the method's invariants."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import GITCOMMITS, fallbacks, left_padded_batch

from flythinker import FlyThinker
from flythinker.tiny import FAMILIES, SLIDING_WINDOW, family_config, random_lm

V = 211
FREE = dict(eos_token_id=[], pad_token_id=0)


def _lm(family: str, seed: int, hidden: int = 64):
    # weights drawn at 0.1 (not 0.02): decisive greedy choices, so equal tokens test the method
    return random_lm(family_config(family, hidden=hidden, vocab=V, init_std=0.1), seed).eval()


def _pair(g_family: str, r_family: str | None = None, lam: float = 0.5, d_r: int = 64, fusion: str = "prefix"):
    return FlyThinker(_lm(g_family, 0), _lm(r_family or g_family, 1, hidden=d_r), lam=lam, fusion=fusion).eval()


def _decoders_agree(model, lengths=(5, 11), new=10):
    """Teacher-forced argmax = sequential greedy = concurrent greedy = each row decoded alone;
    prompt + new tokens run past the sliding window (4) of the families that have one."""
    ids, mask = left_padded_batch(list(lengths), vocab=V, seed=1)
    seq = model.generate(ids, attention_mask=mask, max_new_tokens=new, **FREE)
    full = model(input_ids=torch.cat([ids, seq], 1), attention_mask=torch.cat([mask, torch.ones_like(seq)], 1)).logits
    assert torch.equal(full[:, ids.shape[1] - 1 : -1].argmax(-1), seq), "teacher-forced != sequential"
    conc = model.generate(ids, attention_mask=mask, max_new_tokens=new, mode="concurrent", backend="threads", **FREE)
    assert torch.equal(conc, seq), "concurrent != sequential"
    with fallbacks() as fell_back:
        cap = model.generate(ids, attention_mask=mask, max_new_tokens=new, mode="captured", **FREE)
    assert torch.equal(cap, seq), "captured != sequential"
    windows = [getattr(m.config, "sliding_window", None) for m in (model.generator, model.reasoner)]
    assert bool(fell_back) == any(w == SLIDING_WINDOW for w in windows), fell_back  # static caches where they fit
    for i, n in enumerate(lengths):
        alone = model.generate(ids[i : i + 1, -n:], attention_mask=mask[i : i + 1, -n:], max_new_tokens=new, **FREE)
        assert torch.equal(alone, seq[i : i + 1]), "left padding changed row {i}"
    assert max(lengths) + new > 2 * SLIDING_WINDOW
    return ids, mask, seq


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_keeps_the_invariants(family, tmp_path):
    model = _pair(family)
    g = model.generator
    emb = g.get_input_embeddings()
    layer_norm = emb(torch.arange(emb.num_embeddings)).float().norm(dim=-1).mean()
    assert model.rho().item() == pytest.approx(layer_norm.item(), rel=1e-6)  # what the layer feeds the decoder
    ids, mask, seq = _decoders_agree(model)

    sft = FlyThinker(g, model.reasoner, lam=0.0).eval()  # λ = 0: the generator's own generate
    ours = sft.generate(ids, attention_mask=mask, max_new_tokens=10, **FREE)
    plain = g.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, **FREE)[:, ids.shape[1] :]
    assert torch.equal(ours, plain)
    with_latent = model(input_ids=ids, attention_mask=mask).logits
    assert (with_latent - sft(input_ids=ids, attention_mask=mask).logits).abs().max() > 1e-3  # the latent matters

    model.save_pretrained(tmp_path / "m")
    loaded = FlyThinker.from_pretrained(tmp_path / "m", attn_implementation="eager")
    assert torch.equal(
        loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_finds_each_familys_projections_and_a_step_moves_the_loss(family):
    from flythinker.train.assemble import _add_lora
    from flythinker.train.config import LoraSpec

    model = _pair(family)
    model.generator = _add_lora(model.generator, LoraSpec(r=4, dropout=0.0), "model.generator")
    adapted = {name.rsplit(".", 1)[0] for name, _ in model.generator.named_parameters() if "lora_A" in name}
    layer0 = [n for n in adapted if ".0." in n]
    assert any(k in n for n in layer0 for k in ("attn", "attention")), adapted
    assert any("mlp" in n for n in layer0), adapted
    assert not any("lm_head" in n or "embed" in n for n in adapted)

    ids, mask = left_padded_batch([9, 13], vocab=V, seed=3)
    labels = ids.masked_fill(mask == 0, -100)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    before = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
    after = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert after < before - 1e-3


@pytest.mark.parametrize("g_family,r_family", [("llama", "qwen2"), ("gemma", "mistral"), ("gpt2", "olmo2")])
def test_mixed_families_that_share_one_vocabulary(g_family, r_family):
    _decoders_agree(_pair(g_family, r_family))


@pytest.mark.parametrize("d_r,fusion", [(32, "prefix"), (32, "linear"), (96, "linear")])
def test_generator_and_reasoner_of_different_widths(d_r, fusion):
    _decoders_agree(_pair("qwen3", "llama", d_r=d_r, fusion=fusion))


@pytest.mark.parametrize("kind", ["t5", "bart", "bert"])
def test_what_is_not_a_decoder_only_lm_is_refused_in_one_line_before_loading(kind, tmp_path, capsys):
    from transformers import AutoConfig, AutoModel

    from flythinker.cli import main

    cfg = AutoConfig.for_model(
        kind,
        vocab_size=V,
        d_model=32,
        hidden_size=32,
        num_layers=1,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_heads=2,
        d_ff=64,
        intermediate_size=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
    )
    AutoModel.from_config(cfg).save_pretrained(tmp_path / kind)
    capsys.readouterr()
    data = GITCOMMITS / "sample" / "user_based"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / kind), "--data", str(data), "--out", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "decoder-only causal LMs" in err[0] and kind in err[0], err


def test_a_pair_that_does_not_share_a_vocabulary_is_refused():
    from flythinker.errors import UserError

    g = _lm("llama", 0)
    r = random_lm(family_config("qwen2", vocab=V + 5, init_std=0.1), 1)
    with pytest.raises(UserError, match="vocabulary sizes differ"):
        FlyThinker(g, r, lam=0.5)


def test_every_id_the_generation_config_ends_on_stops_decoding(saved_tiny_model):
    """Llama 3, Gemma and Qwen chat models list several EOS ids in generation_config; each stops a
    row in generate, the concurrent decoder, `flythinker generate` and the server's engine."""
    from flythinker.apps.serve.engine import Engine
    from flythinker.auto import load_model
    from flythinker.lm import eos_ids

    model = _pair("llama")
    ids, mask = left_padded_batch([5, 9], vocab=V, seed=7)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=10, **FREE)
    stop = int(free[0, 2])  # a second end-of-text id: row 0 ends at its third token
    model.generator.generation_config.eos_token_id = [2, stop]
    model.tokenizer = SimpleNamespace(eos_token_id=2, pad_token_id=0)  # the tokenizer knows only one
    assert eos_ids(model.generator, model.tokenizer) == [2, stop]
    for mode in ("sequential", "concurrent"):
        new = model.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=0, mode=mode)
        assert torch.equal(new[0, :3], free[0, :3]) and (new[0, 3:] == 0).all(), mode

    net, tok = load_model(saved_tiny_model)
    net.generator.generation_config.eos_token_id = [tok.eos_token_id, 7]
    engine = Engine(net, tok, max_batch=2, max_queue=2, mode="sequential")
    try:
        assert engine.eos == {tok.eos_token_id, 7}
    finally:
        engine.close()
