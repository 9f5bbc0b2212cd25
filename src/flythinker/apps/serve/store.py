"""The profile store: each user's earlier texts, behind one small interface (SQLAlchemy Core).

SQLite is the embedded default (WAL journal, ``synchronous=FULL``: an acknowledged write survives
a kill -9 or a power cut); PostgreSQL serves several server replicas through the same code. The
schema is versioned: a store written by another schema version is refused with a clear error,
never silently misread.

    >>> store = ProfileStore("runs/profiles.db")                    # or "postgresql://..."  # doctest: +SKIP
    >>> store.replace("u1", [{"title": "Fix", "text": "Fix the parser.", "date": "2024-01-02"}])  # doctest: +SKIP
    >>> store.append("u1", {"text": "Another commit body."})        # doctest: +SKIP
    >>> [i["text"] for i in store.get("u1")]                        # doctest: +SKIP
    ['Fix the parser.', 'Another commit body.']
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from flythinker.errors import UserError

SCHEMA_VERSION = 1
FIELDS = ("title", "text", "date")
MAX_TEXT = 100_000  # characters of one item


def check_item(item) -> dict:
    """A profile item as stored: ``text`` (required, a non-empty string), ``title`` and ``date``
    (optional strings); anything else is a UserError naming the field."""
    if not isinstance(item, dict):
        raise UserError(f"a profile item must be an object, got {type(item).__name__}")
    unknown = set(item) - set(FIELDS)
    if unknown:
        raise UserError(f"profile item: unknown field(s) {sorted(unknown)} (known: {', '.join(FIELDS)})")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise UserError("profile item: 'text' must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise UserError(f"profile item: 'text' has {len(text)} characters (at most {MAX_TEXT})")
    for key in ("title", "date"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise UserError(f"profile item: '{key}' must be a string")
    return {k: item.get(k) for k in FIELDS}


def database_url(where: str | os.PathLike) -> str:
    """A SQLAlchemy URL: URLs pass through, a path becomes a SQLite file (its folder created)."""
    where = str(where)
    if "://" in where:
        return where
    path = Path(where).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class ProfileStore:
    """Users and their profile items, in insertion order; every write is one transaction."""

    def __init__(self, where: str | os.PathLike):
        import sqlalchemy as sa

        self.url = database_url(where)
        self.engine = sa.create_engine(self.url, future=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        meta = sa.MetaData()
        self.version = sa.Table("flythinker_schema", meta, sa.Column("version", sa.Integer, nullable=False))
        self.users = sa.Table("flythinker_users", meta, sa.Column("user_id", sa.String(256), primary_key=True))
        self.items = sa.Table(
            "flythinker_profile_items",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column(
                "user_id",
                sa.String(256),
                sa.ForeignKey("flythinker_users.user_id", ondelete="CASCADE"),
                nullable=False,
                index=True,
            ),
            sa.Column("title", sa.Text),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("date", sa.Text),
        )
        self._lock = threading.Lock()  # SQLite allows one writer; a lock keeps this process's writers in line
        try:
            self._open(meta)
        except sa.exc.OperationalError as e:
            raise UserError(f"profile store {self.url}: cannot open ({str(e.orig).splitlines()[0]})") from None

    def _open(self, meta) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            meta.create_all(conn)  # a no-op for tables that exist
            found = conn.execute(sa.select(self.version.c.version)).scalars().all()
            if not found:
                conn.execute(self.version.insert().values(version=SCHEMA_VERSION))
            elif found != [SCHEMA_VERSION]:
                raise UserError(
                    f"profile store {self.url}: schema version {found} is not this FlyThinker's "
                    f"({SCHEMA_VERSION}); use a store written by this version"
                )

    # --- reads ----------------------------------------------------------------------------------
    def exists(self, user_id: str) -> bool:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return (
                conn.execute(sa.select(self.users.c.user_id).where(self.users.c.user_id == user_id)).first() is not None
            )

    def get(self, user_id: str) -> list[dict] | None:
        """The user's items in the order they were added; None for an unknown user."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            if conn.execute(sa.select(self.users.c.user_id).where(self.users.c.user_id == user_id)).first() is None:
                return None
            rows = conn.execute(
                sa.select(self.items.c.title, self.items.c.text, self.items.c.date)
                .where(self.items.c.user_id == user_id)
                .order_by(self.items.c.id)
            ).all()
        return [{k: v for k, v in zip(FIELDS, row) if v is not None} for row in rows]

    # --- writes (each one transaction: all of it, or nothing) -----------------------------------
    def replace(self, user_id: str, items: list) -> list[dict]:
        """Make ``items`` the user's whole profile (the user is created if new)."""
        if not isinstance(items, list):
            raise UserError("'items' must be a list of profile items")
        clean = [check_item(i) for i in items]  # every item is checked before anything is written
        with self._lock, self.engine.begin() as conn:
            self._ensure_user(conn, user_id)
            conn.execute(self.items.delete().where(self.items.c.user_id == user_id))
            if clean:
                conn.execute(self.items.insert(), [{"user_id": user_id, **i} for i in clean])
        return [{k: v for k, v in i.items() if v is not None} for i in clean]

    def append(self, user_id: str, item) -> dict:
        """Add one item at the end of the user's profile (the user is created if new)."""
        clean = check_item(item)
        with self._lock, self.engine.begin() as conn:
            self._ensure_user(conn, user_id)
            conn.execute(self.items.insert().values(user_id=user_id, **clean))
        return {k: v for k, v in clean.items() if v is not None}

    def delete(self, user_id: str) -> bool:
        """Remove the user and their items; False when there was no such user."""
        with self._lock, self.engine.begin() as conn:
            conn.execute(self.items.delete().where(self.items.c.user_id == user_id))
            return conn.execute(self.users.delete().where(self.users.c.user_id == user_id)).rowcount > 0

    def _ensure_user(self, conn, user_id: str) -> None:
        if not isinstance(user_id, str) or not user_id or len(user_id) > 256:
            raise UserError("a user id is a non-empty string of at most 256 characters")
        if self.engine.dialect.name == "postgresql":  # replicas may create one user at the same time
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        conn.execute(insert(self.users).values(user_id=user_id).on_conflict_do_nothing())

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # fsync at every commit: an acknowledged write is on disk
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")  # another process's write in progress: wait, do not fail
    cur.close()
