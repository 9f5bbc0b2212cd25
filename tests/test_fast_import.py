"""`import flythinker` and `flythinker --help` do not import torch (the package's names load on
first use), and the decoders and variants are found by name on first use."""

from __future__ import annotations

import subprocess
import sys
import time


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_package_and_the_command_line_help_do_not_import_torch():
    out = _python(
        "import sys, contextlib, io\n"
        "import flythinker, flythinker.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        flythinker.cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_help_answers_quickly():
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flythinker.cli", "--help"], capture_output=True, check=True, timeout=60)
    assert time.perf_counter() - t < 1.5  # ~0.3 s on 2 cores; a torch import alone takes ~1.8 s


def test_decoders_and_variants_are_found_by_name_on_first_use():
    """The model names its decoders and built-in variants by entry point: a decode works with no
    registry filled first, and the static variant's module loads only when a folder asks for it."""
    out = _python(
        "import sys, torch\n"
        "from flythinker import model as m\n"
        "from flythinker.tiny import llama_config, random_lm\n"
        "assert not m.VARIANTS\n"
        "cfg = llama_config(32, 1, 2, 1, 64, 97, eos=2, pad=0)\n"
        "net = m.FlyThinker(random_lm(cfg, 0), random_lm(cfg, 1), lam=0.5).eval()\n"
        "out = net.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, eos_token_id=[], pad_token_id=0)\n"
        "loaded = sys.modules.get('flythinker.static') is not None\n"
        "print(out.shape[1], loaded, m.variant_class('static').__name__)"
    )
    assert out.split() == ["3", "False", "StaticThinker"]
