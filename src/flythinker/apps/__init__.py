"""Applications: user-facing jobs built from the components (demo, generate, models, probe,
experiment, bench, serve); nothing below this folder imports it."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(obj, path: str | os.PathLike) -> Path:
    """A result file, atomically (written beside it, then renamed into place); folders made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    return path
