"""The docs tell the truth about themselves: the README stays short with the quick start on its
first screen and one line per command, every relative link and anchor in the docs resolves, and
the README's quick-start demo runs (at its smallest size)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6} (.*)", line)
        if m and not in_code:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def _links(path: Path):
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code:
            yield from LINK.findall(line)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(doc):
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert broken == []


def test_the_readme_is_short_and_starts_with_the_quick_start():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    quick = lines.index("## Quick start")
    assert quick < 25  # on the first screen
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2 and blocks[0].endswith("flythinker demo") and "pytest" in blocks[1]


def test_the_readme_lists_every_command():
    import typer.main

    from flythinker.cli import app

    group = typer.main.get_command(app)
    table = (ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    for name, command in group.commands.items():
        subs = list(getattr(command, "commands", {}) or [])
        for sub in subs or [None]:
            assert re.search(rf"`flythinker {name}\b[^`]*{sub or ''}", table), f"flythinker {name} {sub or ''}"


@pytest.mark.slow
def test_the_quick_start_demo_runs_at_its_smallest_size(tmp_path):
    from flythinker.cli import main

    block = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]
    argv = block.rsplit("&&", 1)[1].split()  # `.venv/bin/flythinker demo`
    assert argv[0].endswith("flythinker") and argv[1:] == ["demo"]
    main([*argv[1:], "--small", "--out", str(tmp_path / "demo")])
    assert (tmp_path / "demo" / "report.md").exists()


def test_the_decoding_page_shows_the_table_of_decoders():
    from flythinker.choices import DECODER_TABLE

    page = (ROOT / "docs" / "decoding.md").read_text()
    for d in DECODER_TABLE:
        yes = lambda b: "yes" if b else "no"  # noqa: E731
        assert f"| `{d.name}` | {d.runs} | {yes(d.backend)} | {yes(d.server)} |" in page
