"""Loading LongLaMP-format data: every file shape, the six public configs, bad rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flythinker.data.longlamp import CONFIGS, Example, load_examples, render_profile_item
from flythinker.errors import UserError

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gitcommits" / "sample"

ROWS = [
    {
        "id": f"r{i}",
        "user_id": f"u{i % 2}",
        "input": f"Write note {i}.",
        "output": f"Note {i} body. It ends here.",
        "profile": [{"title": "Old", "text": f"Earlier text {i}.", "date": "2020-01-01"}],
    }
    for i in range(3)
]

# one public LongLaMP row per task, field names as on the hub (no `id`, a task-specific user field)
LONGLAMP_ROWS = {
    "product_review": {
        "reviewerId": "A1B2",
        "input": 'Generate the review text for a product with description "A kettle".',
        "output": "It boils fast. I like it.",
        "profile": [
            {
                "overall": 5.0,
                "summary": "Great mug",
                "description": "A travel mug",
                "reviewText": "Keeps coffee hot for hours.",
            }
        ],
    },
    "abstract_generation": {
        "name": "Ada Lovelace",
        "input": 'Generate an abstract for the title "Engines" using the following items: 1. analytical engine',
        "output": "We describe an engine. It computes.",
        "profile": [{"id": "p1", "title": "Notes on engines", "abstract": "We discuss the engine.", "year": 1843}],
    },
    "topic_writing": {
        "author": "redditor42",
        "input": "Generate the content for a reddit post about tea.",
        "output": "Tea is great. Drink it hot.",
        "profile": [
            {
                "id": "t1",
                "author": "redditor42",
                "summary": "Coffee thoughts",
                "content": "Coffee is fine but tea is better.",
            }
        ],
    },
}
MAIN_TEXT = {
    "product_review": "Keeps coffee hot for hours.",
    "abstract_generation": "We discuss the engine.",
    "topic_writing": "Coffee is fine but tea is better.",
}
USER = {"product_review": "A1B2", "abstract_generation": "Ada Lovelace", "topic_writing": "redditor42"}


def write_json(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_arrow_stream(path: Path, rows) -> Path:
    """An Arrow IPC stream, the format `datasets` writes to its cache and to save_to_disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


# --- file shapes ----------------------------------------------------------------------


def test_json_list_jsonl_and_parquet_load_the_same_examples(tmp_path):
    loaded = [
        load_examples(write_json(tmp_path / "a.json", ROWS)),
        load_examples(write_jsonl(tmp_path / "b.jsonl", ROWS)),
        load_examples(write_parquet(tmp_path / "c.parquet", ROWS)),
        load_examples(write_jsonl(tmp_path / "d.json", ROWS)),
    ]  # JSON lines named .json
    assert loaded[0] == loaded[1] == loaded[2] == loaded[3]
    ex = loaded[0][1]
    assert ex == Example(
        id="r1",
        user_id="u1",
        input="Write note 1.",
        output="Note 1 body. It ends here.",
        profile=ROWS[1]["profile"],
        task="generic",
    )


def test_directory_with_splits(tmp_path):
    write_json(tmp_path / "train.json", ROWS)
    write_jsonl(tmp_path / "dev.jsonl", ROWS[:2])
    write_parquet(tmp_path / "test.parquet", ROWS[:1])
    assert [len(load_examples(tmp_path, split=s)) for s in ("train", "dev", "test")] == [3, 2, 1]
    assert len(load_examples(tmp_path, split="val")) == 2  # the hub's name for dev
    assert len(load_examples(tmp_path, split="validation")) == 2
    with pytest.raises(UserError, match="no data file for split 'eval'"):
        load_examples(tmp_path, split="eval")
    with pytest.raises(UserError, match="pass split="):
        load_examples(tmp_path)


def test_limit_and_generated_ids(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in ROWS]
    write_json(tmp_path / "train.json", rows)
    assert [e.id for e in load_examples(tmp_path, split="train")] == ["train-0", "train-1", "train-2"]
    assert [e.id for e in load_examples(tmp_path / "train.json", limit=2)] == ["train-0", "train-1"]
    assert load_examples(tmp_path / "train.json", limit=0) == []


def test_gitcommits_sample_loads():
    examples = load_examples(SAMPLE / "user_based" / "train.json")
    raw = json.loads((SAMPLE / "user_based" / "train.json").read_text())
    assert len(examples) == len(raw) == 30
    assert all(e.task == "generic" for e in examples)
    assert [e.id for e in examples] == [r["id"] for r in raw]
    assert [e.user_id for e in examples] == [r["user_id"] for r in raw]
    assert examples[0].output == raw[0]["output"] and examples[0].profile == raw[0]["profile"]
    assert load_examples(SAMPLE / "user_based", split="train") == examples
    assert "Text: " + raw[0]["profile"][0]["text"].strip() in render_profile_item(raw[0]["profile"][0], "generic")


# --- the public LongLaMP configs ------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_longlamp_config_from_a_hub_snapshot(tmp_path, config):
    task = config.rsplit("_", 1)[0]
    rows = [LONGLAMP_ROWS[task]] * 2
    for other in CONFIGS:  # a snapshot holds every config; only the chosen one may load
        other_task = other.rsplit("_", 1)[0]
        write_parquet(tmp_path / other / "train-00000-of-00001.parquet", [LONGLAMP_ROWS[other_task]] * 3)
    write_parquet(tmp_path / config / "test-00000-of-00001.parquet", rows)
    from_config_dir = load_examples(tmp_path / config, split="test")
    from_snapshot = load_examples(tmp_path, split="test", task=config)
    assert from_config_dir == from_snapshot
    assert [e.id for e in from_config_dir] == ["test-0", "test-1"]
    ex = from_config_dir[0]
    assert (ex.task, ex.user_id) == (task, USER[task])
    assert MAIN_TEXT[task] in render_profile_item(ex.profile[0], task)
    with pytest.raises(UserError, match="several candidate data files"):
        load_examples(tmp_path, split="train")


@pytest.mark.parametrize("task", sorted(LONGLAMP_ROWS))
def test_task_is_detected_from_profile_keys(tmp_path, task):
    [ex] = load_examples(write_json(tmp_path / "data.json", [LONGLAMP_ROWS[task]]))
    assert ex.task == task and ex.user_id == USER[task]


def test_topic_items_in_the_benchmark_codes_input_output_shape(tmp_path):
    row = dict(LONGLAMP_ROWS["topic_writing"], profile=[{"input": "Coffee thoughts", "output": "Tea wins."}])
    [ex] = load_examples(write_json(tmp_path / "topic_writing_user" / "x.json", [row]))
    assert ex.task == "topic_writing"
    assert render_profile_item(ex.profile[0], ex.task) == "Summary: Coffee thoughts\nPost: Tea wins."


def test_explicit_task_and_unknown_keys(tmp_path):
    path = write_json(tmp_path / "data.json", [dict(ROWS[0], profile=[{"note": "x"}])])
    with pytest.raises(UserError, match=r"row 0 \(id 'r0'\): field 'profile\[0\]'.*pass task="):
        load_examples(path)
    with pytest.raises(UserError, match=r"field 'profile\[0\].reviewText': missing"):
        load_examples(path, task="product_review")
    with pytest.raises(UserError, match="unknown task 'reviews'"):
        load_examples(path, task="reviews")


def test_task_without_profile_items_from_config_name_or_user_field(tmp_path):
    row = {"input": "x", "output": "y", "profile": []}
    [ex] = load_examples(write_json(tmp_path / "topic_writing_temporal" / "test.json", [row]))
    assert ex.task == "topic_writing"
    [ex] = load_examples(write_json(tmp_path / "d.json", [dict(row, reviewerId="A9")]))
    assert (ex.task, ex.user_id) == ("product_review", "A9")
    [ex] = load_examples(write_json(tmp_path / "e.json", [row]))
    assert (ex.task, ex.user_id, ex.id) == ("generic", None, "e-0")


def test_optional_reasoning_field(tmp_path):
    [ex] = load_examples(write_json(tmp_path / "a.json", [dict(ROWS[0], reasoning="Think first.")]))
    assert ex.reasoning == "Think first."
    assert load_examples(write_json(tmp_path / "b.json", ROWS[:1]))[0].reasoning is None
    with pytest.raises(UserError, match="field 'reasoning': expected a string"):
        load_examples(write_json(tmp_path / "c.json", [dict(ROWS[0], reasoning=1)]))


def test_datasets_cache_and_save_to_disk_layouts(tmp_path):
    rows = [LONGLAMP_ROWS["abstract_generation"]] * 3
    cache = tmp_path / "cache" / "LongLaMP___long_la_mp" / "abstract_generation_user" / "0.0.0" / "abc123"
    write_arrow_stream(cache / "long_la_mp-train-00000-of-00002.arrow", rows[:2])
    write_arrow_stream(cache / "long_la_mp-train-00001-of-00002.arrow", rows[2:])
    write_arrow_stream(cache / "long_la_mp-test.arrow", rows[:1])
    (cache / "dataset_info.json").write_text("{}")
    train = load_examples(tmp_path / "cache", split="train")
    assert [e.id for e in train] == ["train-0", "train-1", "train-2"]
    assert train[0].task == "abstract_generation" and train[0].user_id == "Ada Lovelace"

    saved = tmp_path / "saved"  # DatasetDict.save_to_disk
    write_arrow_stream(saved / "val" / "data-00000-of-00001.arrow", rows[:2])
    for name in ("dataset_dict.json", "val/state.json", "val/dataset_info.json"):
        (saved / name).write_text("{}")
    dev = load_examples(saved, split="dev")
    assert len(dev) == 2 and dev[0].task == "abstract_generation"


# --- bad rows -------------------------------------------------------------------------

BAD_ROWS = {
    "missing field": ({"id": "bad", "input": "x", "profile": []}, "field 'output': missing"),
    "wrong type": (
        {"id": "bad", "input": 3, "output": "y", "profile": []},
        "field 'input': expected a string, got int",
    ),
    "empty output": ({"id": "bad", "input": "x", "output": "  \n", "profile": []}, "field 'output': is empty"),
    "profile not a list": (
        {"id": "bad", "input": "x", "output": "y", "profile": "none"},
        "field 'profile': expected a list",
    ),
    "profile item type": (
        {"id": "bad", "input": "x", "output": "y", "profile": ["text"]},
        r"field 'profile\[0\]': expected an object",
    ),
    "profile item key": (
        {"id": "bad", "input": "x", "output": "y", "profile": [{"title": "t"}]},
        r"field 'profile\[0\].text': missing",
    ),
    "id type": ({"id": [1], "input": "x", "output": "y", "profile": []}, "field 'id': expected a string"),
    "duplicate id": ({"id": "r0", "input": "x", "output": "y", "profile": []}, "repeats the id of row 0"),
}


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_names_file_row_id_and_field(tmp_path, kind, fmt):
    bad, message = BAD_ROWS[kind]
    path = (write_json if fmt == "json" else write_jsonl)(tmp_path / f"train.{fmt}", ROWS[:2] + [bad])
    with pytest.raises(UserError) as err:
        load_examples(path)
    text = str(err.value)
    assert text.startswith(f"{path}: row 2")
    if isinstance(bad["id"], str):
        assert f"(id {bad['id']!r})" in text
    assert re.search(message, text), text


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_non_utf8_bytes_name_the_row_and_field(tmp_path, fmt):
    path = (write_json if fmt == "json" else write_jsonl)(tmp_path / f"d.{fmt}", ROWS)
    path.write_bytes(path.read_bytes().replace(b"Note 2 body", b"Note 2 b\xffdy"))
    with pytest.raises(UserError, match=r"row 2 \(id 'r2'\): field 'output': not valid UTF-8 \(bad byte 0xff"):
        load_examples(path)


def test_invalid_json_names_the_row(tmp_path):
    text = json.dumps(ROWS, indent=1).replace('"r2",', '"r2"', 1)  # a missing comma in row 2
    (tmp_path / "list.json").write_text(text)
    with pytest.raises(UserError, match=r"list.json: row 2: invalid JSON at line \d+ column \d+"):
        load_examples(tmp_path / "list.json")
    lines = [json.dumps(r) for r in ROWS]
    (tmp_path / "lines.jsonl").write_text("\n".join(lines[:1] + [lines[1][:-1]] + lines[2:]))
    with pytest.raises(UserError, match=r"lines.jsonl: row 1: invalid JSON on line 2"):
        load_examples(tmp_path / "lines.jsonl")
    (tmp_path / "obj.json").write_text('"just a string"')
    with pytest.raises(UserError, match="expected a JSON list"):
        load_examples(tmp_path / "obj.json")


def test_bad_parquet_row_and_unreadable_files(tmp_path):
    rows = ROWS[:2] + [dict(ROWS[2], output="")]
    with pytest.raises(UserError, match=r"c.parquet: row 2 \(id 'r2'\): field 'output': is empty"):
        load_examples(write_parquet(tmp_path / "c.parquet", rows))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="broken.parquet: cannot read as parquet"):
        load_examples(tmp_path / "broken.parquet")
    with pytest.raises(UserError, match="no such file"):
        load_examples(tmp_path / "missing.json")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported file type"):
        load_examples(tmp_path / "data.csv")
