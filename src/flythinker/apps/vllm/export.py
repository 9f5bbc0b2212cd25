"""``flythinker export vllm RUN OUT``: a FlyThinker folder as one vLLM model folder.

A folder that ``flythinker train`` writes holds ``generator/`` and ``reasoner/`` (two
transformers folders) and ``flythinker.json``. vLLM reads one folder with one ``config.json``
and the weights beside it, so the export writes:

* ``config.json`` — :class:`~flythinker.apps.vllm.config.FlyThinkerVllmConfig`: G's config, R's
  config, λ, ρ as the trained model computes it, the fusion mode, gate and latent centring;
* ``generator-*.safetensors`` / ``reasoner-*.safetensors`` — the two models' tensors unchanged,
  their names prefixed ``generator.`` / ``reasoner.``, and ``fusion-*.safetensors`` (``fusion.``)
  when the fusion has weights (linear map, gate, μ and σ);
* G's tokenizer, chat template and generation config, and the training run's ``config.yaml``
  (the prompt settings the server builds prompts with).

Nothing is converted: the tensors are the trained ones, bit for bit. The folder is written
beside ``OUT`` and renamed into place; an existing ``OUT`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from flythinker.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


def exported_config(model, generator_config, reasoner_config):
    """The :class:`FlyThinkerVllmConfig` of a loaded FlyThinker (refusing what vLLM cannot run)."""
    from flythinker.apps.vllm.config import ARCHITECTURE, FlyThinkerVllmConfig

    if model.reasoner_runs != "every_token":  # how R runs when λ ≠ 0 (FlyThinker.reasoning)
        raise UserError(
            f"the {model.variant!r} variant cannot run on vLLM: its R reads "
            + ("its own prompt" if model.reasoner_runs == "own_prompt" else "the prompt once")
            + ", and the vLLM model fuses R's latent of the previous token only (export a plain FlyThinker)"
        )
    fusion = model.fusion
    g, r = generator_config.to_dict(), reasoner_config.to_dict()
    return FlyThinkerVllmConfig(
        text_config=g,
        reasoner_config=r,
        lam=fusion.lam,
        rho=float(model.rho()),
        fusion=fusion.mode,
        gate=fusion.gate_mode,
        center_latent=fusion.latent_mean is not None,
        standardize_latent=fusion.latent_scale is not None,
        architectures=[ARCHITECTURE],
        dtype=g.get("dtype") or g.get("torch_dtype") or "float32",
        tie_word_embeddings=bool(g.get("tie_word_embeddings", False)),
    )


def export_vllm(run: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``run`` (a FlyThinker folder) as a vLLM model folder at ``out``; returns ``out``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from flythinker.auto import is_flythinker_folder
    from flythinker.model import FlyThinker
    from flythinker.saving import FUSION_WEIGHTS, replace_dir, staging_dir

    run, out = Path(run).expanduser(), Path(out).expanduser()
    if not is_flythinker_folder(run):
        raise UserError(
            f"{run}: not a FlyThinker folder (no flythinker.json): export a folder that `flythinker train` wrote"
        )
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
    model = FlyThinker.from_pretrained(run)  # ρ exactly as the trained model computes it
    config = exported_config(model, model.generator.config, model.reasoner.config)
    del model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        for part in ("generator", "reasoner"):
            files = sorted((run / part).glob("*.safetensors"))
            if not files:
                raise UserError(f"{run / part}: no .safetensors weights")
            for i, src in enumerate(files):
                with safe_open(str(src), framework="pt") as f:
                    tensors = {f"{part}.{k}": f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                save_file(tensors, str(tmp / f"{part}-{i + 1:05d}.safetensors"), metadata={"format": "pt"})
                del tensors
        if (run / FUSION_WEIGHTS).exists():
            with safe_open(str(run / FUSION_WEIGHTS), framework="pt") as f:
                tensors = {f"fusion.{k}": f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            save_file(tensors, str(tmp / "fusion-00001.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        for cfg in (run / "config.yaml", run.parent / "config.yaml"):  # the training prompt settings
            if cfg.is_file():
                shutil.copyfile(cfg, tmp / "config.yaml")
                break
        for name in TOKENIZER_FILES:
            if (run / "generator" / name).exists():
                shutil.copyfile(run / "generator" / name, tmp / name)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def describe(out: Path) -> str:
    cfg = json.loads((out / "config.json").read_text())
    return (
        f"{out}: G {cfg['text_config'].get('model_type')}, R {cfg['reasoner_config'].get('model_type')}, "
        f"λ {cfg['lam']}, ρ {cfg['rho']:.6g}, fusion {cfg['fusion']}"
    )


def export_vllm_command(
    run: Path = typer.Argument(..., help="a folder that `flythinker train` wrote (e.g. runs/x/final)"),
    out: Path = typer.Argument(..., help="the vLLM model folder to write"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT if it exists"),
) -> None:
    """Write a trained FlyThinker as one folder that `vllm serve OUT` and `vllm.LLM(model=OUT)` run."""
    out = export_vllm(run, out, overwrite=overwrite)
    print(describe(out))
    print(f"serve it: vllm serve {out}   (pip install 'flythinker[vllm]'; see docs/vllm.md)")
