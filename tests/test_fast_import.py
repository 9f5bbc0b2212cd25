"""`import flythinker` and `flythinker --help` do not import torch (the package's names load on
first use), and the registries the package used to fill at import still fill on first use."""

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


def test_decoders_and_variants_register_on_first_use_without_the_package_names():
    out = _python(
        "import torch\n"
        "from flythinker import model as m\n"
        "from flythinker.tiny import llama_config, random_lm\n"
        "assert not m.DECODERS and not m.VARIANTS\n"
        "cfg = llama_config(32, 1, 2, 1, 64, 97, eos=2, pad=0)\n"
        "net = m.FlyThinker(random_lm(cfg, 0), random_lm(cfg, 1), lam=0.5).eval()\n"
        "out = net.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, eos_token_id=[], pad_token_id=0)\n"
        "print(out.shape[1], 'static' in m.VARIANTS, sorted(m.DECODERS)[:1])"
    )
    assert out.split()[:2] == ["3", "True"]
