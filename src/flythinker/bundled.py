"""The configs shipped inside the package (``flythinker/configs/*.yaml``), addressable by name, so a
wheel install (which has no ``src/``) reaches them: ``flythinker train smollm2_flythinker``.

    >>> sorted(bundled_configs())[:2]
    ['experiment_gitcommits', 'experiment_gitcommits_d128']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flythinker.errors import UserError


def bundled_configs() -> dict[str, Path]:
    """Name (the file name without ``.yaml``) -> path of every packaged config."""
    folder = resources.files("flythinker") / "configs"
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_config(value: str | Path) -> Path:
    """A config file as given, else the packaged config of that name (``smollm2_flythinker`` or
    ``smollm2_flythinker.yaml``); one line listing the names otherwise."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    known = bundled_configs()
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in known:
        return known[name]
    if path.exists():
        raise UserError(f"{value}: not a config file")
    raise UserError(
        f"{value}: no such config file, nor a bundled config of that name ({', '.join(sorted(known))}; "
        "flythinker configs list)"
    )


def configs_list_command() -> None:
    """The bundled configs: name, the command that runs it (its first line) and its path."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled configs (pass the name where a config path goes)")
    for col in ("name", "first line", "path"):
        table.add_column(col)
    for name, path in sorted(bundled_configs().items()):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        table.add_row(name, first, str(path))
    Console().print(table)
