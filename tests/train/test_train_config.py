"""Config loading: shipped recipes, overrides, and errors that name the bad key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import SAMPLE, tiny_raw, write_yaml

from flythinker.errors import UserError
from flythinker.train.config import TrainConfig, apply_overrides, check_paths, load_config
from flythinker.train.config import from_dict as build
from flythinker.train.trainer import lr_factor

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "flythinker" / "configs"


RECIPES = (
    "tiny_flythinker.yaml",
    "tiny_sft.yaml",
    "qwen2.5-3b_flythinker.yaml",
    "qwen2.5-3b_sft.yaml",
    "qwen2.5-7b-g_1.5b-r_flythinker.yaml",
    "qwen2.5-7b_sft.yaml",
)


def shipped():
    return [CONFIGS / name for name in RECIPES]  # (other commands ship configs here too)


def test_shipped_configs_load_and_say_how_to_run_them():
    for path in shipped():
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# flythinker train src/flythinker/configs/{path.name}"), path.name
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig)


def test_paper_recipes_match_the_paper():
    for path in shipped():
        if not path.name.startswith("qwen"):
            continue
        cfg = load_config(path)
        t = cfg.train
        assert (t.lr, t.epochs, t.effective_batch_size, t.precision) == (5e-6, 5, 64, "bf16"), path.name
        if cfg.model.mode == "flythinker":
            assert cfg.model.lam == 0.5
    seven = load_config(CONFIGS / "qwen2.5-7b-g_1.5b-r_flythinker.yaml").model
    assert "7B" in seven.generator.path and "1.5B" in seven.reasoner.path


def test_tiny_configs_point_at_the_shared_sample_and_pass_path_checks(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    if not SAMPLE.is_dir():
        pytest.skip("gitcommits sample not present")
    for name in ("tiny_flythinker.yaml", "tiny_sft.yaml"):
        cfg = load_config(CONFIGS / name)
        assert cfg.data.path == "../shared/data/gitcommits/sample/user_based"
        check_paths(cfg)  # raises if anything is missing


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=-1e-4", "train.lr"),
        ("train.lr=nan", "train.lr"),
        ("train.lr=abc", "train.lr"),
        ("model.lam=-0.5", "model.lam"),
        ("model.lam=.nan", "model.lam"),
        ("train.lrr=1", "train.lrr"),
        ("model.generator.dtype=int8", "model.generator.dtype"),
        ("model.generator.tiny.num_heads=3", "model.generator.tiny.num_heads"),
        ("model.generator.lora.r=0", "model.generator.lora.r"),
        ("data.prompt.retreival=bm25", "data.prompt.retreival"),
        ("data.prompt.k=0", "data.prompt"),
        ("train.precision=fp8", "train.precision"),
        ("train.epochs=1.5", "train.epochs"),
        ("train.resume=maybe", "train.resume"),
        ("train.keep_last=-1", "train.keep_last"),
        ("model.generator.path=/x", "model.generator.path"),  # path and tiny both given
        ("model.generator.num_layers=1", "model.generator.num_layers"),  # a tiny model has tiny.num_layers
        ("bogus.key=1", "bogus"),
    ],
)
def test_bad_values_name_their_key(tmp_path, override, key):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_raw())
    with pytest.raises(UserError) as e:
        load_config(cfg, [override])
    assert f"{key}" in str(e.value) and str(cfg) in str(e.value)


def test_unknown_key_suggests_the_close_one(tmp_path):
    raw = tiny_raw()
    raw["train"]["warmup_step"] = 3
    with pytest.raises(UserError, match=r"train\.warmup_step: unknown key \(did you mean 'warmup_steps'\?\)"):
        load_config(write_yaml(tmp_path / "c.yaml", raw))


def test_missing_paths_name_the_key(tmp_path):
    raw = tiny_raw(model={"generator": {"path": str(tmp_path / "no-such-model")}})
    cfg = build(TrainConfig, raw)
    with pytest.raises(UserError, match=r"model\.generator\.path: .*no-such-model does not exist"):
        check_paths(cfg)
    cfg = build(TrainConfig, tiny_raw(data={"path": str(tmp_path / "no-data")}))
    with pytest.raises(UserError, match=r"data\.path: .*no-data does not exist"):
        check_paths(cfg)
    cfg = build(TrainConfig, {"model": {"mode": "flythinker", "generator": {"tiny": {}}}})
    with pytest.raises(UserError, match=r"model\.reasoner: required"):
        check_paths(cfg, data=False)


def test_overrides_parse_types_and_create_sections(tmp_path):
    cfg = load_config(
        write_yaml(tmp_path / "c.yaml", tiny_raw()),
        [
            "train.lr=1e-4",
            "model.lam=0.3",
            "model.reasoner.lora.r=8",
            "train.max_grad_norm=null",
            "train.betas=[0.9, 0.95]",
            "data.prompt.retrieval=bm25",
        ],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.model.lam == 0.3
    assert cfg.model.reasoner.lora.r == 8 and cfg.model.reasoner.lora.alpha == 32.0
    assert cfg.train.max_grad_norm is None and cfg.train.betas == [0.9, 0.95]
    assert cfg.data.prompt_config().retrieval == "bm25"
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["train.lr"])


def test_effective_batch_size_sets_accumulation_per_device_count():
    cfg = build(TrainConfig, tiny_raw(train={"batch_size": 4, "effective_batch_size": 64}))
    assert cfg.train.accumulation(1) == 16 and cfg.train.accumulation(8) == 2
    with pytest.raises(UserError, match="effective_batch_size"):
        cfg.train.accumulation(3)


def test_freeze_reasoner_with_reasoner_lora_is_refused():
    with pytest.raises(UserError, match="model.freeze_reasoner"):
        build(TrainConfig, tiny_raw(model={"freeze_reasoner": True, "reasoner": {"tiny": {}, "lora": {}}}))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, total=20, warmup=4, schedule="cosine", min_ratio=0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[3:], f[4:]))  # non-increasing after warmup
    assert math.isclose(lr_factor(20, 20, 4, "cosine", 0.1), 0.1)
    assert lr_factor(10, 20, 0, "constant", 0.0) == 1.0
