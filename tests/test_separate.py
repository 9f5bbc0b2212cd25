"""An R with its own prompt (profile_in: reasoner): forward == the reference decoder, placement,
refusals, save/load, and the whole path through training, NLL, diagnostics, probe and generation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import SHARED, tiny_causal_lm
from torch.testing import assert_close

from flythinker import FlyThinker, SeparatePromptThinker
from flythinker.data.collate import collate
from flythinker.decoding.concurrent import close_shared_decoders
from flythinker.decoding.loop import reference_stepper
from flythinker.errors import UserError


def separate_pair(d_g=32, d_r=32, lam=1.0, fusion="prefix", std=0.2):
    g = tiny_causal_lm(hidden=d_g, seed=0, init_std=std)
    r = tiny_causal_lm(hidden=d_r, seed=1, init_std=std)
    return SeparatePromptThinker(generator=g, reasoner=r, lam=lam, fusion=fusion).eval()


def random_ids(n, seed):
    return torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# two rows: G's prompts (query alone) shorter than R's (profile + query), one response length
G_PROMPTS = [random_ids(4, 1), random_ids(7, 2)]
R_PROMPTS = [random_ids(11, 3), random_ids(9, 4)]
RESPONSES = [random_ids(6, 5), random_ids(6, 6)]


def training_batch(padding_side="right"):
    feats = [
        {"input_ids": g + y, "labels": [-100] * len(g) + y, "reasoner_input_ids": r + y}
        for g, r, y in zip(G_PROMPTS, R_PROMPTS, RESPONSES)
    ]
    return collate(feats, pad_token_id=0, padding_side=padding_side)


def decoded_logits(model, device="cpu"):
    """The reference loop's logits, teacher-forced on RESPONSES: (B, L, V), the logits that predict
    each response token (the prefill's, then one per step)."""
    g, r = on(collate(G_PROMPTS, 0), device), on(collate(R_PROMPTS, 0), device)  # left padded
    stepper = reference_stepper(model, (r["input_ids"], r["attention_mask"]))
    logits = [stepper.add(g["input_ids"], g["attention_mask"])]
    responses = torch.tensor(RESPONSES, device=device)
    for t in range(responses.shape[1] - 1):
        logits.append(stepper.step(responses[:, t]))
    stepper.finish()
    return torch.stack(logits, dim=1)


def on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def forward_logits(model, batch):
    """The training forward's logits at the positions that predict response tokens: (B, L, V)."""
    out = model(**batch).logits
    rows = []
    for b, g in enumerate(G_PROMPTS):
        start = int(batch["attention_mask"][b].argmax()) + len(g) - 1
        rows.append(out[b, start : start + len(RESPONSES[b])])
    return torch.stack(rows)


@pytest.mark.parametrize("d_g,d_r,fusion", [(32, 32, "prefix"), (48, 32, "prefix"), (32, 48, "linear")])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_the_training_forward_equals_the_reference_decoder(d_g, d_r, fusion, padding_side):
    model = separate_pair(d_g, d_r, fusion=fusion)
    assert_close(forward_logits(model, training_batch(padding_side)), decoded_logits(model), atol=1e-5, rtol=1e-5)
    # and the decoder's tokens are the forward's: greedy decoding of the same prompts
    g, r = collate(G_PROMPTS, 0), collate(R_PROMPTS, 0)
    new = model.generate(
        g["input_ids"],
        attention_mask=g["attention_mask"],
        max_new_tokens=5,
        eos_token_id=[],
        pad_token_id=0,
        reasoner_input_ids=r["input_ids"],
        reasoner_attention_mask=r["attention_mask"],
    )
    feats = [
        {"input_ids": gp + y, "labels": [-100] * len(gp) + y, "reasoner_input_ids": rp + y}
        for gp, rp, y in zip(G_PROMPTS, R_PROMPTS, new.tolist())
    ]
    batch = collate(feats, 0, padding_side)
    logits = model(**batch).logits
    for b, gp in enumerate(G_PROMPTS):
        start = int(batch["attention_mask"][b].argmax()) + len(gp) - 1
        assert logits[b, start : start + 5].argmax(-1).tolist() == new[b].tolist()


def test_on_each_device_the_forward_equals_the_decoder(device):
    model = separate_pair().to(device)
    want = decoded_logits(model, device)
    assert want.device.type == device.type
    assert_close(forward_logits(model, on(training_batch(), device)), want, atol=1e-4, rtol=1e-4)


def test_the_latent_reaches_g_only_through_the_response_and_only_from_rs_prompt():
    model = separate_pair()
    batch = training_batch()
    out = model(**batch).logits
    model.fusion.lam = 0.0
    plain = model(**batch).logits  # SFT on the query alone: R is not run
    model.fusion.lam = 1.0
    for b, g in enumerate(G_PROMPTS):  # G's prompt positions take no latent
        assert torch.equal(out[b, : len(g)], plain[b, : len(g)])
        assert (out[b, len(g) : len(g) + 6] - plain[b, len(g) : len(g) + 6]).abs().amax(-1).min() > 1e-4
    other = dict(batch, reasoner_input_ids=batch["reasoner_input_ids"].clone())
    other["reasoner_input_ids"][:, 2] = (other["reasoner_input_ids"][:, 2] + 1) % 97  # another profile token
    changed = model(**other).logits
    assert not torch.allclose(changed[0, len(G_PROMPTS[0]) :], out[0, len(G_PROMPTS[0]) :])


@pytest.mark.parametrize("backend", ["threads", "shm", "gloo"])
def test_concurrent_decoding_over_rs_own_prompt_gives_the_reference_tokens(backend):
    """R's step on a thread or in a worker process (which keeps its own mask and positions, built from
    R's prompt it is given): the reference's tokens, greedy and sampled."""
    model = separate_pair()
    g, r = collate(G_PROMPTS, 0), collate(R_PROMPTS, 0)
    kw = dict(max_new_tokens=8, eos_token_id=[], pad_token_id=0, attention_mask=g["attention_mask"])
    kw.update(reasoner_input_ids=r["input_ids"], reasoner_attention_mask=r["attention_mask"])
    try:
        for sample in ({}, dict(do_sample=True, temperature=0.8, top_p=0.95, seed=3)):
            ref = model.generate(g["input_ids"], **kw, **sample)
            new = model.generate(g["input_ids"], mode="concurrent", backend=backend, **kw, **sample)
            assert torch.equal(new, ref), sample
    finally:
        close_shared_decoders()


def test_refusals_name_what_is_missing():
    model = separate_pair()
    batch = training_batch()
    with pytest.raises(UserError, match="reasoner_input_ids"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    g, r = collate(G_PROMPTS, 0), collate(R_PROMPTS, 0)
    with pytest.raises(UserError, match="pass reasoner_input_ids"):
        model.generate(g["input_ids"], attention_mask=g["attention_mask"], max_new_tokens=2)
    with pytest.raises(UserError, match="sequential"):
        model.generate(
            g["input_ids"],
            attention_mask=g["attention_mask"],
            max_new_tokens=2,
            mode="captured",
            reasoner_input_ids=r["input_ids"],
            reasoner_attention_mask=r["attention_mask"],
        )
    with pytest.raises(UserError, match="B = 2"):
        model.generate(g["input_ids"], max_new_tokens=2, reasoner_input_ids=r["input_ids"][:1])
    from flythinker.apps.serve.engine import Engine

    with pytest.raises(UserError, match="flythinker generate"):
        Engine(model, tokenizer=None)
    plain = FlyThinker(model.generator, model.reasoner, lam=0.5)
    with pytest.raises(UserError, match="separate_prompts"):
        plain(**batch)
    with pytest.raises(UserError, match="separate_prompts"):
        plain.generate(g["input_ids"], max_new_tokens=2, reasoner_input_ids=r["input_ids"])


def test_an_experiment_refuses_a_static_latent_from_rs_own_prompt():
    from flythinker.apps.experiment.cells import build_cell_model
    from flythinker.train.config import TrainConfig, from_dict

    cfg = from_dict(TrainConfig, {"model": {"mode": "flythinker"}, "data": {"prompt": {"profile_in": "reasoner"}}})
    with pytest.raises(UserError, match="static"):
        build_cell_model(cfg, "static", tokenizer=None)


def test_save_and_load_keep_the_variant(tmp_path):
    model = separate_pair(lam=0.3)
    model.save_pretrained(tmp_path / "m")
    loaded = FlyThinker.from_pretrained(tmp_path / "m")
    assert type(loaded) is SeparatePromptThinker and loaded.lam == 0.3
    batch = training_batch()
    assert_close(loaded(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)  # eager vs sdpa


@pytest.mark.skipif(not (SHARED / "data" / "gitcommits").is_dir(), reason="needs ../shared/data/gitcommits")
def test_a_run_with_the_profile_in_r_trains_and_is_measured_and_decoded(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from helpers import tiny_config
    from typer.testing import CliRunner

    from flythinker.apps.generate import DecodeSettings, generate_predictions
    from flythinker.auto import load_model
    from flythinker.cli import app
    from flythinker.data.longlamp import load_examples
    from flythinker.evaluate.diagnostics import latent_diagnostics
    from flythinker.evaluate.nll import mean_nll
    from flythinker.train.trainer import train

    prompt = {"retrieval": "recent", "k": 1, "profile_tokens": 48, "query_tokens": 32, "target_tokens": 48}
    cfg = tiny_config(data={"prompt": {**prompt, "profile_in": "reasoner"}}, train={"epochs": 1, "save_every": 0})
    result = train(cfg, tmp_path / "run")
    model, tok = load_model(result.final_checkpoint)
    assert type(model) is SeparatePromptThinker
    exs = load_examples(cfg.data.path, split="test", limit=4)
    prompt_cfg = cfg.data.prompt_config()
    nll = mean_nll(model, tok, exs, prompt_cfg, batch_size=3)
    d = latent_diagnostics(model, tok, exs, prompt_cfg, batch_size=3)
    assert d["nll_own"] == pytest.approx(nll, rel=1e-4) and d["nll_no_latent"] != pytest.approx(nll, rel=1e-6)
    model.fusion.lam = 0.0  # no latent: G on the query alone, whatever R's prompt holds
    assert d["nll_no_latent"] == pytest.approx(mean_nll(model, tok, exs, prompt_cfg, batch_size=3), rel=1e-4)
    # the probe with the run's own prompt settings: the profile goes to R; --latents adds the latent rows
    args = ["probe", "--model", str(result.final_checkpoint), "--data", str(cfg.data.path), "--limit", "4"]
    run = CliRunner().invoke(app, [*args, "--bootstrap", "0", "--latents", "--json", str(tmp_path / "probe.json")])
    assert run.exit_code == 0, run.output
    assert "profile in the prompt" in run.output and "| another example's |" in run.output
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["prompt"]["profile_in"] == "reasoner" and probe["nll"]["own"] != probe["nll"]["none"]
    assert probe["latents"]["nll_own"] == probe["nll"]["own"]
    assert probe["latents"]["offset_norm"] == pytest.approx(cfg.model.lam * probe["latents"]["rho"], rel=1e-5)
    model.fusion.lam = cfg.model.lam
    settings = DecodeSettings(max_new_tokens=4, batch_size=2, temperature=0.8, top_p=0.95, seed=0)
    generate_predictions(
        model, tok, exs, tmp_path / "p.jsonl", prompt_cfg=prompt_cfg, settings=settings, progress=False
    )
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4


def test_sft_cannot_put_the_profile_in_r():
    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from helpers import tiny_config

    with pytest.raises(UserError, match="profile_in"):
        tiny_config(model={"mode": "sft"}, data={"prompt": {"profile_in": "reasoner"}})
    with pytest.raises(UserError, match="profile_in"):
        tiny_config(data={"prompt": {"profile_in": "generator"}})
