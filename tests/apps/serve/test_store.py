"""The profile store on SQLite (and on PostgreSQL where FLYTHINKER_TEST_POSTGRES gives a URL)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from flythinker.apps.serve.store import SCHEMA_VERSION, ProfileStore
from flythinker.errors import UserError

URLS = ["sqlite"] + (["postgres"] if os.environ.get("FLYTHINKER_TEST_POSTGRES") else [])


@pytest.fixture(params=URLS)
def store(request, tmp_path):
    if request.param == "sqlite":
        s = ProfileStore(tmp_path / "db" / "profiles.db")
    else:
        s = ProfileStore(os.environ["FLYTHINKER_TEST_POSTGRES"])
        with s.engine.begin() as conn:  # a clean slate per test
            conn.execute(s.items.delete())
            conn.execute(s.users.delete())
    yield s
    s.close()


def test_replace_append_get_delete(store):
    assert store.get("u1") is None
    assert store.replace("u1", [{"title": "A", "text": "first"}, {"text": "second", "date": "2024-01-02"}]) == [
        {"title": "A", "text": "first"},
        {"text": "second", "date": "2024-01-02"},
    ]
    store.append("u1", {"text": "third"})
    assert [i["text"] for i in store.get("u1")] == ["first", "second", "third"]
    store.replace("u1", [{"text": "only"}])
    assert store.get("u1") == [{"text": "only"}]
    store.replace("u2", [])
    assert store.get("u2") == [] and store.exists("u2")
    assert store.delete("u1") and store.get("u1") is None and not store.delete("u1")
    assert store.get("u2") == []


@pytest.mark.parametrize(
    "items",
    [
        [{"text": ""}],
        [{"title": "no text"}],
        [{"text": 5}],
        [{"text": "ok", "title": 3}],
        [{"text": "ok", "x": 1}],
        ["just a string"],
        [{"text": "x" * 100_001}],
        "not a list",
    ],
)
def test_a_bad_item_changes_nothing(store, items):
    store.replace("u1", [{"text": "kept"}])
    with pytest.raises(UserError):
        store.replace("u1", [{"text": "fine"}, *items] if isinstance(items, list) else items)
    with pytest.raises(UserError):
        store.append("u1", items[0] if isinstance(items, list) else items)
    assert store.get("u1") == [{"text": "kept"}]


def test_bad_user_ids_are_refused(store):
    for uid in ("", "x" * 257, 7):
        with pytest.raises(UserError):
            store.append(uid, {"text": "t"})


def test_writes_survive_a_reopen_and_concurrent_writers_lose_nothing(store):
    def writer(k):
        for j in range(20):
            store.append(f"w{k % 2}", {"text": f"{k}-{j}"})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = ProfileStore(store.url)
    try:
        texts = [i["text"] for u in ("w0", "w1") for i in again.get(u)]
        assert sorted(texts) == sorted(f"{k}-{j}" for k in range(4) for j in range(20))
        assert [t for t in (i["text"] for i in again.get("w0")) if t.startswith("0-")] == [f"0-{j}" for j in range(20)]
    finally:
        again.close()


def test_sqlite_is_wal_and_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "p.db"
    ProfileStore(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("UPDATE flythinker_schema SET version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(UserError, match="schema version"):
        ProfileStore(path)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(UserError, match="cannot open"):
        ProfileStore(tmp_path / "dir.db")


_WRITER = """
import sys
from flythinker.apps.serve.store import ProfileStore
store = ProfileStore(sys.argv[1])
i = len(store.get("u") or [])  # go on numbering after the previous run's items
while True:
    store.append("u", {"text": f"item {i}"})
    print(i, flush=True)  # acknowledged: the transaction has committed
    i += 1
"""


def test_kill_minus_9_during_writes_keeps_every_acknowledged_write(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "p.db"
    acked = -1
    for _ in range(3):  # three kills at random moments of a stream of writes
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        seen = 0
        while seen < 20 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                acked, seen = max(acked, int(line)), seen + 1
        proc.send_signal(signal.SIGKILL)
        rest = proc.communicate()[0]
        for line in rest.splitlines():  # acknowledged before the kill landed
            acked = max(acked, int(line))
        store = ProfileStore(db)
        texts = [i["text"] for i in store.get("u")]
        store.close()
        numbers = [int(t.split()[1]) for t in texts]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # intact, in order
        assert acked in numbers  # every acknowledged write is there
