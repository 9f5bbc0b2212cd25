"""The method's invariants (docs/design.md#one-vocabulary-and-the-invariants) on tiny random Qwen2 models, fp32."""

from __future__ import annotations

import pytest
import torch
from tiny_models import left_padded_batch, tiny_causal_lm, tiny_pair
from torch.testing import assert_close

from flythinker import FlyThinker
from flythinker.decoding.steps import GeneratorRunner, ReasonerRunner
from flythinker.errors import UserError
from flythinker.model import positions_from_mask

PAIRS = [
    pytest.param(32, 32, "prefix", id="equal-prefix"),
    pytest.param(48, 32, "prefix", id="dR<dG-prefix"),
    pytest.param(32, 32, "linear", id="equal-linear"),
    pytest.param(32, 48, "linear", id="dR>dG-linear"),
]


def stepwise_logits(model, ids, mask):
    """Logits at every position, produced token by token by the cached decoder's runners."""
    r, g = ReasonerRunner(model), GeneratorRunner(model)
    pos = positions_from_mask(mask)
    first = 1  # prefill one token, then step through the rest
    z = r.prefill(ids[:, :first], mask[:, :first], pos[:, :first])
    logits = [g.prefill(ids[:, :first], mask[:, :first], pos[:, :first], z)]
    latent = z[:, -1:]
    for t in range(first, ids.shape[1]):
        z_t = r.step(ids[:, t], mask[:, : t + 1], pos[:, t : t + 1])
        logits.append(g.step(ids[:, t], latent, mask[:, : t + 1], pos[:, t : t + 1]))
        latent = z_t
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("d_g,d_r,fusion", PAIRS)
def test_one_pass_forward_equals_stepwise_decoding(d_g, d_r, fusion, device):
    model = tiny_pair(d_g=d_g, d_r=d_r, fusion=fusion, device=device)
    ids, mask = left_padded_batch([12], seed=1, device=device)
    full = model(input_ids=ids, attention_mask=mask).logits
    steps = stepwise_logits(model, ids, mask)
    assert_close(steps, full, atol=1e-5 if device.type == "cpu" else 1e-4, rtol=1e-5 if device.type == "cpu" else 1e-4)
    # and the latents really matter: λ=0 gives different logits
    model.fusion.lam = 0.0
    assert (model(input_ids=ids, attention_mask=mask).logits - full).abs().max() > 1e-3


@pytest.mark.parametrize("d_g,d_r,fusion", PAIRS)
def test_greedy_generate_is_argmax_of_teacher_forced_forward(d_g, d_r, fusion, device):
    model = tiny_pair(d_g=d_g, d_r=d_r, fusion=fusion, lam=1.0, device=device)
    ids, mask = left_padded_batch([7, 10], seed=2, device=device)
    new = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[], pad_token_id=0)
    assert new.shape == (2, 12)
    full_ids = torch.cat([ids, new], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
    logits = model(input_ids=full_ids, attention_mask=full_mask).logits
    T = ids.shape[1]
    assert torch.equal(logits[:, T - 1 : -1].argmax(-1), new)


def test_lambda_zero_is_exactly_the_plain_generator(device):
    model = tiny_pair(lam=0.0, device=device)
    g = model.generator
    ids, mask = left_padded_batch([5, 9], seed=3, device=device)
    pos = positions_from_mask(mask)
    ours = model(input_ids=ids, attention_mask=mask).logits
    plain = g(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(ours, plain)
    new = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=2, pad_token_id=0)
    ref = g.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=0)
    ref_new = ref[:, ids.shape[1] :]
    assert torch.equal(new, ref_new[:, : new.shape[1]])
    assert ref_new.shape[1] == new.shape[1] or (ref_new[:, new.shape[1] :] == 0).all()


def test_lambda_zero_skips_the_reasoner_but_positive_lambda_uses_it():
    model = tiny_pair(lam=0.0)
    calls = []
    model.reasoner.model.register_forward_hook(lambda *a: calls.append(1))
    ids, mask = left_padded_batch([6], seed=4)
    model(input_ids=ids, attention_mask=mask)
    model.generate(ids, attention_mask=mask, max_new_tokens=3)
    assert calls == []
    model.fusion.lam = 0.5
    model(input_ids=ids, attention_mask=mask)
    assert calls == [1]


def test_reasoner_lm_head_is_never_computed():
    model = tiny_pair()
    calls = []
    model.reasoner.lm_head.register_forward_hook(lambda *a: calls.append(1))
    ids, mask = left_padded_batch([6], seed=5)
    model(input_ids=ids, attention_mask=mask)
    model.generate(ids, attention_mask=mask, max_new_tokens=3)
    assert calls == []


@pytest.mark.parametrize("do_sample", [False, True])
def test_left_padded_batch_equals_each_row_alone(do_sample, device):
    model = tiny_pair(lam=1.0, device=device)
    lengths = [4, 11, 8]
    ids, mask = left_padded_batch(lengths, seed=6, device=device)
    batch_logits = model(input_ids=ids, attention_mask=mask).logits
    kw = dict(max_new_tokens=8, eos_token_id=[], pad_token_id=0)
    batch_new = model.generate(ids, attention_mask=mask, **kw)
    for i, n in enumerate(lengths):
        row_ids, row_mask = ids[i : i + 1, -n:], mask[i : i + 1, -n:]
        alone = model(input_ids=row_ids, attention_mask=row_mask).logits
        tol = 1e-5 if device.type == "cpu" else 1e-4
        assert_close(batch_logits[i : i + 1, -n:], alone, atol=tol, rtol=tol)
        assert torch.equal(model.generate(row_ids, attention_mask=row_mask, **kw), batch_new[i : i + 1])
    if do_sample:  # seeded sampling: per-row alone differs (RNG is per batch), but reruns agree
        s1 = model.generate(
            ids, attention_mask=mask, do_sample=True, top_p=0.9, top_k=20, temperature=0.8, seed=3, **kw
        )
        s2 = model.generate(
            ids, attention_mask=mask, do_sample=True, top_p=0.9, top_k=20, temperature=0.8, seed=3, **kw
        )
        s3 = model.generate(
            ids, attention_mask=mask, do_sample=True, top_p=0.9, top_k=20, temperature=0.8, seed=4, **kw
        )
        assert torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_per_row_eos_pads_finished_rows():
    model = tiny_pair(lam=1.0)
    ids, mask = left_padded_batch([5, 9], seed=7)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[], pad_token_id=0)
    eos = int(free[0, 2])  # make row 0 stop at its third token
    new = model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(new[0, :3], free[0, :3]) and (new[0, 3:] == 0).all()
    stop1 = (free[1] == eos).nonzero()
    n1 = int(stop1[0]) + 1 if len(stop1) else 10
    assert torch.equal(new[1, :n1], free[1, :n1])


@pytest.mark.parametrize("d_g,d_r,fusion", [PAIRS[1], PAIRS[3]])
def test_save_load_round_trip_gives_identical_logits(tmp_path, d_g, d_r, fusion, device):
    model = tiny_pair(d_g=d_g, d_r=d_r, fusion=fusion, lam=0.7, device=device)
    if model.fusion.proj is not None:  # make the projection differ from its initialisation
        torch.nn.init.normal_(model.fusion.proj.weight)
    ids, mask = left_padded_batch([6, 9], seed=8, device=device)
    before = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = FlyThinker.from_pretrained(tmp_path / "m", attn_implementation="eager", device=device)
    assert loaded.lam == 0.7 and loaded.fusion.mode == fusion
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, before)
    with pytest.raises(UserError, match="already exists"):
        model.save_pretrained(tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_killed_writers_staging_folder_is_removed_by_the_next_write(tmp_path):
    """``kill -9`` during an export leaves ``.m.tmp-HOST-PID-xxxx`` (a model's worth of disk); the
    next write of ``m`` removes it, but not a live process's nor another host's."""
    import os
    import socket
    import subprocess

    from flythinker.saving import staging_dir

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    host = socket.gethostname().replace("-", "_")
    debris = tmp_path / f".m.tmp-{host}-{dead.pid}-abcd"
    live = tmp_path / f".m.tmp-{host}-{os.getppid()}-efgh"
    elsewhere = tmp_path / f".m.tmp-otherhost-{dead.pid}-ijkl"
    for folder in (debris, live, elsewhere):
        (folder / "generator").mkdir(parents=True)
    tiny_pair().save_pretrained(tmp_path / "m")
    assert not debris.exists() and live.is_dir() and elsewhere.is_dir()
    assert staging_dir(tmp_path / "m").name.startswith(f".m.tmp-{host}-{os.getpid()}-")


def test_mismatched_vocabularies_are_refused():
    g = tiny_causal_lm(vocab=97)
    r = tiny_causal_lm(vocab=120, seed=1)
    with pytest.raises(UserError, match="vocabulary sizes differ"):
        FlyThinker(generator=g, reasoner=r)


def test_prefix_fusion_refuses_a_wider_reasoner():
    with pytest.raises(UserError, match="fusion='linear'"):
        tiny_pair(d_g=32, d_r=48, fusion="prefix")


def test_gradients_reach_both_models_and_loss_ignores_prompt():
    model = tiny_pair(lam=0.5).train()
    ids, mask = left_padded_batch([6, 9], seed=9)
    labels = ids.clone()
    labels[:, :-3] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert model.generator.model.embed_tokens.weight.grad.abs().sum() > 0
    assert model.reasoner.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    # loss is CE over the unmasked positions only
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    ref = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(out.loss, ref)


def test_fusion_is_norm_matched():
    model = tiny_pair(d_g=48, d_r=32, lam=0.5)
    from flythinker.fusion import embedding_norm

    z = torch.randn(2, 3, 32) * 17
    off = model.fusion.latent_offset(z, model.rho())
    rho = embedding_norm(model.generator.get_input_embeddings().weight)
    assert_close(off.norm(dim=-1), torch.full((2, 3), 0.5 * rho.item()))
    assert (off[..., 32:] == 0).all()  # prefix mode: only the first d_R dimensions


def test_saved_custom_tokenizer_loads_back_as_itself(tmp_path):
    """A plain `tokenizers` tokenizer saved next to a Qwen2 model must not come back as Qwen2Tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(40)]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    g, r = tiny_causal_lm(vocab=len(tok)), tiny_causal_lm(vocab=len(tok), seed=1)
    FlyThinker(g, r, generator_tokenizer=tok, reasoner_tokenizer=tok).save_pretrained(tmp_path / "m")
    loaded = FlyThinker.from_pretrained(tmp_path / "m").tokenizer
    assert len(loaded) == len(tok)
    assert loaded("w3 w17 w39")["input_ids"] == tok("w3 w17 w39")["input_ids"] == [5, 19, 41]
