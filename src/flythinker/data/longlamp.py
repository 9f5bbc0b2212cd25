"""LongLaMP-format data from local files: JSON, JSONL, parquet, or a local `datasets` cache.

One example = a query (``input``), the text to write (``output``) and the user's earlier
writings (``profile``). The public LongLaMP (Kumar et al., 2024) has three tasks, each in a
``user`` and a ``temporal`` config, and names its fields per task:

=====================  ============  ==========================================================
task                   user field    profile item
=====================  ============  ==========================================================
product_review         reviewerId    ``{overall, summary, description, reviewText}``
abstract_generation    name          ``{title, abstract}`` (the public files add ``id, year``)
topic_writing          author        ``{summary, content}`` (the benchmark code: ``{input, output}``)
generic                user_id       ``{title, text}`` (e.g. ../shared/data/gitcommits)
=====================  ============  ==========================================================

Shapes that load (never over the network):

* a ``.json`` file holding a list of examples, or a ``.jsonl`` file with one a line;
* a ``.parquet`` file or a `datasets` ``.arrow`` file (pyarrow reads both; `datasets`
  itself need not be installed);
* a directory holding split files, e.g. ``train.json``/``dev.json``/``test.json``, a hub
  snapshot config folder (``product_review_user/train-00000-of-00001.parquet``), a
  ``save_to_disk`` folder (``train/data-00000-of-00001.arrow``) or a `datasets` cache folder
  (``long_la_mp-train.arrow``); ``split`` picks the files (``dev``, ``val`` and
  ``validation`` are one split). A folder holding several configs needs ``task=`` set to
  the config name, e.g. ``task="topic_writing_user"``.

    >>> ex = load_examples("../shared/data/gitcommits/sample/user_based", split="train")  # doctest: +SKIP
    >>> ex[0].task, ex[0].user_id, len(ex[0].profile)                                      # doctest: +SKIP
    ('generic', 'git-u2103f1bf36', 5)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from flythinker.errors import UserError

TASKS = ("product_review", "abstract_generation", "topic_writing", "generic")
CONFIGS = tuple(f"{t}_{s}" for t in TASKS[:3] for s in ("user", "temporal"))
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow")
# `datasets` writes these JSON files next to its data; they are never examples
_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "dataset_infos.json"}
_SPLIT_ALIASES = {"dev": ("dev", "val", "validation"), "val": ("val", "dev", "validation"),
                  "validation": ("validation", "val", "dev")}


@dataclass(frozen=True)
class _TaskSpec:
    user_field: str
    # (label, accepted keys): the first key is the public LongLaMP name; the last pair is
    # the item's main text, the one field an item must have
    fields: tuple[tuple[str, tuple[str, ...]], ...]


_SPECS = {
    "product_review": _TaskSpec("reviewerId", (("Rating", ("overall",)), ("Product", ("description",)),
                                               ("Summary", ("summary",)), ("Review", ("reviewText",)))),
    "abstract_generation": _TaskSpec("name", (("Title", ("title",)), ("Abstract", ("abstract",)))),
    "topic_writing": _TaskSpec("author", (("Summary", ("summary", "input")), ("Post", ("content", "output")))),
    "generic": _TaskSpec("user_id", (("Title", ("title",)), ("Text", ("text",)))),
}


@dataclass
class Example:
    """One personalized generation example (LongLaMP shape).

    >>> Example(id="a", user_id="u1", input="Write about tea.", output="Tea is good.",
    ...         profile=[{"title": "Coffee", "text": "I like coffee."}], task="generic").task
    'generic'
    """

    id: str
    user_id: str | None
    input: str
    output: str
    profile: list[dict]
    task: str  # "product_review" | "abstract_generation" | "topic_writing" | "generic"
    reasoning: str | None = None  # optional explicit reasoning (think-then-generate baseline)


def item_field(item: dict, keys: tuple[str, ...]):
    """The value of the first of ``keys`` present (and not None) in ``item``, else None."""
    for key in keys:
        if item.get(key) is not None:
            return item[key]
    return None


def item_fields(item: dict, task: str) -> list[tuple[str, str]]:
    """``(label, text)`` for each of the task's fields the item has, in reading order."""
    out = []
    for label, keys in _SPECS[task].fields:
        value = item_field(item, keys)
        if value is not None and str(value).strip():
            out.append((label, str(value).strip()))
    return out


def render_profile_item(item: dict, task: str) -> str:
    """One profile item as prompt text: one ``Label: value`` line per field it has.

    >>> render_profile_item({"title": "Fix a leak", "text": "Free the buffer."}, "generic")
    'Title: Fix a leak\\nText: Free the buffer.'
    >>> render_profile_item({"overall": 5.0, "summary": "Great", "reviewText": "Loved it."},
    ...                     "product_review")
    'Rating: 5.0\\nSummary: Great\\nReview: Loved it.'
    """
    if task not in _SPECS:
        raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return "\n".join(f"{label}: {text}" for label, text in item_fields(item, task))


def detect_task(item: dict) -> str | None:
    """The task whose main text key a profile item has (``reviewText`` → product_review, ...)."""
    for task in TASKS:
        if item_field(item, _SPECS[task].fields[-1][1]) is not None:
            return task
    return None


# --- reading files --------------------------------------------------------------------


def _read_json_text(file: Path) -> str:
    # surrogateescape keeps a bad byte as a lone surrogate, so the row and field that hold it
    # can be named later (_check_str) instead of failing on the whole file
    return file.read_bytes().decode("utf-8", errors="surrogateescape")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _iter_json_list(text: str, file: Path):
    """Rows of a JSON list, decoded one at a time so an error names its row."""
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")
    pos = ws.match(text, 0).end()
    if not text.startswith("[", pos):
        raise UserError(f"{file}: expected a JSON list of examples (or JSON lines), "
                        f"found {text[pos:pos + 20]!r}")
    pos = ws.match(text, pos + 1).end()
    row = 0
    while not text.startswith("]", pos):
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}: row {row}: invalid JSON at line {e.lineno} column {e.colno}: "
                            f"{e.msg}") from None
        yield row, obj
        row += 1
        pos = ws.match(text, pos).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise UserError(f"{file}: row {row}: invalid JSON at line {_line(text, pos)}: "
                            f"expected ',' or ']' after row {row - 1}")
    if text[pos + 1:].strip():
        raise UserError(f"{file}: invalid JSON at line {_line(text, pos + 1)}: data after the list")


def _iter_json_lines(text: str, file: Path):
    row = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{file}: row {row}: invalid JSON on line {lineno} column {e.colno}: "
                            f"{e.msg} (read as JSON lines: one example a line)") from None
        yield row, obj
        row += 1


def _read_table(file: Path) -> list[dict]:
    import pyarrow as pa

    try:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(file).to_pylist()
        with pa.memory_map(str(file)) as source:  # `datasets` writes Arrow IPC streams
            try:
                return pa.ipc.open_stream(source).read_all().to_pylist()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all().to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{file}: cannot read as {file.suffix[1:]}: {e}") from None


def _iter_rows(file: Path):
    """``(row, record)`` pairs of one file, rows counted from 0."""
    if file.suffix in (".parquet", ".arrow"):
        yield from enumerate(_read_table(file))
        return
    text = _read_json_text(file)
    head = text.lstrip()[:1]
    if file.suffix == ".jsonl" or head == "{":  # a .json file may hold JSON lines too
        yield from _iter_json_lines(text, file)
    else:
        yield from _iter_json_list(text, file)


# --- finding files --------------------------------------------------------------------


def _parse_task(task: str | None) -> tuple[str | None, str | None]:
    """``task=`` may name a task or a LongLaMP config: returns (task, config)."""
    if task is None or task in TASKS:
        return task, None
    if task in CONFIGS:
        return task.rsplit("_", 1)[0], task
    raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS + CONFIGS)}")


def _split_of(file: Path, root: Path) -> set[str]:
    """Split names a file may belong to: words of its name and the names of its folders."""
    words = set(re.split(r"[-_.]", file.name.split(".")[0]))
    return words | set(file.relative_to(root).parts[:-1])


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file()
                  and p.name not in _METADATA_FILES and ".cache" not in p.parts)


def _resolve_files(path: Path, split: str | None, config: str | None) -> list[Path]:
    """The data files to read: one file, or the shards of one split in one folder."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise UserError(f"{path}: unsupported file type; expected {', '.join(DATA_SUFFIXES)}")
        return [path]
    files = _data_files(path)
    if config is not None:
        files = [f for f in files if config in f.relative_to(path).parts] or files
    if split is not None:
        names = _SPLIT_ALIASES.get(split, (split,))
        for name in names:  # the exact name first, then its aliases
            hits = [f for f in files if name in _split_of(f, path)]
            if hits:
                files = hits
                break
        else:
            raise UserError(f"{path}: no data file for split {split!r} "
                            f"(looked for {', '.join(names)} in {len(files)} data files)")
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        groups.setdefault((f.parent, f.suffix), []).append(f)
    if len(groups) == 1:
        return next(iter(groups.values()))
    if not groups:
        raise UserError(f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) in this directory")
    shown = ", ".join(str(f.relative_to(path)) for f in files[:8])
    hint = "pass split=" if split is None else "pass a more specific path or task=<config>"
    raise UserError(f"{path}: several candidate data files ({shown}{', ...' if len(files) > 8 else ''}); "
                    f"{hint}")


# --- rows to examples -----------------------------------------------------------------


class _Row:
    """Where a record came from, for error messages: ``file: row 3 (id x): field 'output': ...``."""

    def __init__(self, file: Path, row: int, rec):
        self.file, self.row, self.rec = file, row, rec

    def error(self, field: str | None, problem: str) -> UserError:
        rid = self.rec.get("id") if isinstance(self.rec, dict) else None
        where = f"{self.file}: row {self.row}" + (f" (id {rid!r})" if rid is not None else "")
        return UserError(f"{where}: " + (f"field {field!r}: " if field else "") + problem)


def _check_str(row: _Row, field: str, value, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise row.error(field, f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else repr(bad)
        raise row.error(field, f"not valid UTF-8 (bad byte {byte} at character {e.start})") from None
    if nonempty and not value.strip():
        raise row.error(field, "is empty")
    return value


def _check_profile(row: _Row, profile, task: str) -> list[dict]:
    if not isinstance(profile, list):
        raise row.error("profile", f"expected a list of items, got {type(profile).__name__}")
    main_keys = _SPECS[task].fields[-1][1]
    for j, item in enumerate(profile):
        field = f"profile[{j}]"
        if not isinstance(item, dict):
            raise row.error(field, f"expected an object, got {type(item).__name__}")
        if item_field(item, main_keys) is None:
            raise row.error(f"{field}.{main_keys[0]}", f"missing (a {task} profile item needs "
                            f"{' or '.join(main_keys)}; it has {', '.join(map(str, item)) or 'no keys'})")
        for key, value in item.items():
            if isinstance(value, str):
                _check_str(row, f"{field}.{key}", value)
            elif value is not None and not isinstance(value, (int, float, list, dict)):
                raise row.error(f"{field}.{key}", f"unsupported type {type(value).__name__}")
    return profile


def _to_example(row: _Row, task: str, default_id: str) -> Example:
    rec = row.rec
    if not isinstance(rec, dict):
        raise row.error(None, f"expected an object, got {type(rec).__name__}")
    for field in ("input", "output", "profile"):
        if field not in rec or rec[field] is None:
            raise row.error(field, "missing")
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise row.error("id", f"expected a string or integer, got {type(rid).__name__}")
    user_field = "user_id" if rec.get("user_id") is not None else _SPECS[task].user_field
    user = rec.get(user_field)
    if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))):
        raise row.error(user_field, f"expected a string or integer, got {type(user).__name__}")
    reasoning = rec.get("reasoning")
    return Example(
        id=default_id if rid is None else str(rid),
        user_id=None if user is None else str(user),
        input=_check_str(row, "input", rec["input"], nonempty=True),
        output=_check_str(row, "output", rec["output"], nonempty=True),
        profile=_check_profile(row, rec["profile"], task),
        task=task,
        reasoning=None if reasoning is None else _check_str(row, "reasoning", reasoning),
    )


def _guess_task(rows: list[_Row], file: Path) -> str:
    """The data's own keys decide; a config name in the path or a user field only break ties."""
    for row in rows:
        profile = row.rec.get("profile") if isinstance(row.rec, dict) else None
        if isinstance(profile, list) and profile and isinstance(profile[0], dict):
            task = detect_task(profile[0])
            if task is None:
                raise row.error("profile[0]", f"cannot tell the task from its keys "
                                f"({', '.join(map(str, profile[0]))}); pass task=")
            return task
    for part in reversed(file.parts):  # no profile items at all
        if part in CONFIGS:
            return part.rsplit("_", 1)[0]
    for task in TASKS[:3]:
        if any(isinstance(r.rec, dict) and _SPECS[task].user_field in r.rec for r in rows):
            return task
    return "generic"


def load_examples(path: str | Path, split: str | None = None, task: str | None = None,
                  limit: int | None = None) -> list[Example]:
    """Load LongLaMP-format examples from a local file or directory (see the module doc).

    ``task`` is a task name or a LongLaMP config name (``"product_review_temporal"``, which
    also picks that config's folder); when None it comes from the profile items' keys (else
    from a config name in the path, else from the user field).
    Examples without ``id`` get ``f"{split}-{row}"`` (the file's name when no split is
    given); without ``user_id``, the task's user field (``author``, ``name``, ``reviewerId``).
    A bad row raises :class:`UserError` naming the file, the row (and id) and the field.

    >>> ex = load_examples("../shared/data/gitcommits/sample/temporal/dev.json", limit=2)  # doctest: +SKIP
    >>> [e.id for e in ex]                                                                  # doctest: +SKIP
    ['git-5c3d5a38231c', 'git-0d330673d4fa']
    """
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    path = Path(path)
    task, config = _parse_task(task)
    files = _resolve_files(path, split, config)
    rows: list[_Row] = []
    for file in files:
        for i, rec in _iter_rows(file) if limit is None or len(rows) < limit else ():
            rows.append(_Row(file, i, rec))
            if limit is not None and len(rows) >= limit:
                break
    task = task or _guess_task(rows, files[0])
    prefix = split or re.sub(r"-\d+-of-\d+$", "", files[0].name.split(".")[0])  # drop a shard suffix
    examples, seen = [], {}
    for n, row in enumerate(rows):
        ex = _to_example(row, task, default_id=f"{prefix}-{n}")
        if ex.id in seen:
            raise row.error("id", f"{ex.id!r} repeats the id of row {seen[ex.id]}")
        seen[ex.id] = row.row
        examples.append(ex)
    return examples
