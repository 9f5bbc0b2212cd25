"""Predictions files: JSONL, one ``{"id", "user_id", "prediction", ...}`` record a line.

The one reader and writer of the format that ``flythinker generate`` appends to and
``flythinker evaluate``, the experiment and the demo read. Appends are whole batches followed by
an fsync, so a kill leaves whole records and at worst a torn last line, which a resumed run cuts off.

    >>> append_records(Path("preds.jsonl"), [{"id": "a", "user_id": "u", "prediction": "text"}])  # doctest: +SKIP
    >>> read_predictions(Path("preds.jsonl"))                                                      # doctest: +SKIP
    {'a': 'text'}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flythinker.errors import UserError


def read_records(path: Path) -> dict[str, dict]:
    """Records of a predictions file being resumed; a torn last line (crash mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise UserError(f"{path}: not a file (predictions are written to a JSONL file)")
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    try:
        text = raw[:end].decode("utf-8")
    except UnicodeDecodeError as e:  # checked before the cut below: a foreign file stays untouched
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line} is not valid UTF-8; not a predictions file (pass another --out)"
        ) from None
    done = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                done[rec["id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}: line {n} is not a predictions record") from None
    if end < len(raw):  # a half-written last line: drop it so appends stay line-aligned
        with open(path, "r+b") as f:
            f.truncate(end)
    return done


def read_predictions(path: Path) -> dict[str, str]:
    """``{id: prediction}`` of a finished file, strictly: bad lines and repeated ids are UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: predictions file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: not valid UTF-8 (bad byte 0x{e.object[e.start]:02x})") from None
    preds, line_of = {}, {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {lineno}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("prediction"), str):
            raise UserError(f"{path}: line {lineno}: need an object with 'id' and a string 'prediction'")
        key = str(row["id"])
        if key in preds:
            raise UserError(f"{path}: id {key!r} appears twice (lines {line_of[key]} and {lineno})")
        preds[key], line_of[key] = row["prediction"], lineno
    if not preds:
        raise UserError(f"{path}: no predictions")
    return preds


def encode_records(records: list[dict]) -> bytes:
    """The bytes of predictions JSONL lines, as written (UTF-8, not ASCII-escaped)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def append_records(path: Path, records: list[dict]) -> None:
    """Append whole records with one write, then fsync (a kill leaves at worst a torn last line)."""
    data = encode_records(records)
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_records(path: Path, records: list[dict]) -> Path:
    """Write a whole predictions file atomically (a temporary file renamed into place)."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_bytes(encode_records(records))
    os.replace(tmp, path)
    return Path(path)
