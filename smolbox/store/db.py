"""The SQLite connection under the store: WAL, busy timeout, one writer, migrations.

Why these settings:

- WAL lets readers proceed while one process writes, so ``smolbox list`` never
  waits for a slow create in another process.
- Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the database's
  write lock *before* reading, so a read-check-write (such as "is this transition
  allowed from the current state?") cannot interleave with another process's
  write. Deferred transactions would instead fail late with SQLITE_BUSY when they
  try to upgrade their read lock.
- ``busy_timeout`` makes a second writer wait for the lock instead of failing at once.
- The connection is shared by the threads of one process behind a re-entrant lock;
  nested ``write()`` blocks become savepoints of the outer transaction, so a store
  method called inside a caller's ``write()`` joins it and a failed inner step rolls
  back only itself.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smolbox import errors
from smolbox.store import reserve, schema
from smolbox.store.errors import translate

DEFAULT_BUSY_TIMEOUT_S = 10.0

Params = Sequence[Any] | dict[str, Any]


class Database:
    """One sqlite3 connection, its lock and the transaction discipline around it."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._depth = 0

    @classmethod
    def open(cls, path: Path, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
             target_version: int | None = None) -> Database:
        """Open (creating if needed) and migrate to ``target_version`` (default: latest)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise errors.HostError(
                f"Cannot create the directory of the smolbox store {path}: {err.strerror}",
                details={"path": str(path.parent)},
                help="Point SMOLBOX_HOME at a directory this user can write.",
            ) from None
        try:
            db = cls._connect(path, busy_timeout_s, target_version)
        except errors.DiskSpaceError:  # a full disk: borrow the reserve (store/reserve.py)
            if not reserve.release(path.parent):
                raise
            db = cls._connect(path, busy_timeout_s, target_version)
            reserve.give_back(path.parent)
        reserve.ensure(path.parent)
        return db

    @classmethod
    def _connect(cls, path: Path, busy_timeout_s: float, target_version: int | None
                 ) -> Database:
        try:
            conn = sqlite3.connect(
                str(path), timeout=busy_timeout_s, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise translate(err, path, "open") from None
        db = cls(path, conn)
        try:
            db._configure(busy_timeout_s)
            db._migrate(schema.LATEST_VERSION if target_version is None else target_version)
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise errors.InternalError(
                "The smolbox store is closed", details={"path": str(self.path)},
                help="This is a smolbox bug: a store was used after close().",
            )
        return self._conn

    # ------------------------------------------------------------------ statements

    def query(self, sql: str, params: Params = (), *, operation: str = "read"
              ) -> list[sqlite3.Row]:
        """Run a read and return every row (reads outside ``write()`` autocommit)."""
        with self._lock:
            try:
                return list(self.conn.execute(sql, params).fetchall())
            except sqlite3.Error as err:
                raise translate(err, self.path, operation) from None

    def execute(self, sql: str, params: Params = (), *, operation: str = "write") -> int:
        """Run one statement; callers wrap writes in :meth:`write`. Returns rowcount."""
        with self._lock:
            try:
                return self.conn.execute(sql, params).rowcount
            except sqlite3.Error as err:
                raise translate(err, self.path, operation) from None

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextmanager
    def write(self, operation: str = "write") -> Iterator[None]:
        """A write transaction holding the database's write lock across processes."""
        with self._lock:
            conn = self.conn
            depth = self._depth
            savepoint = f"sp{depth}"
            try:
                conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {savepoint}")
            except sqlite3.Error as err:
                raise translate(err, self.path, operation) from None
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._undo(depth, savepoint, operation)
                raise
            self._depth -= 1
            try:
                conn.execute("COMMIT" if depth == 0 else f"RELEASE {savepoint}")
            except sqlite3.Error as err:
                self._undo(depth, savepoint, operation)
                raise translate(err, self.path, operation) from None

    def _undo(self, depth: int, savepoint: str, operation: str) -> None:
        conn = self.conn
        try:
            if depth == 0:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.execute(f"ROLLBACK TO {savepoint}")
                conn.execute(f"RELEASE {savepoint}")
        except sqlite3.Error as err:
            raise translate(err, self.path, f"rollback of {operation}") from None

    # ------------------------------------------------------------------ setup

    def _configure(self, busy_timeout_s: float) -> None:
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as err:
            raise translate(err, self.path, "configure") from None
        if str(mode).lower() != "wal":
            raise errors.HostError(
                f"The smolbox store at {self.path} cannot use write-ahead logging "
                f"(journal mode stays {mode})",
                details={"path": str(self.path), "journal_mode": mode},
                help="Put SMOLBOX_HOME on a local file system (WAL does not work over NFS).",
            )

    def version(self) -> int:
        """The schema version the database is at (0 for a new database)."""
        self.execute(schema.VERSION_TABLE, operation="schema version")
        rows = self.query("SELECT MAX(version) AS v FROM schema_version",
                          operation="schema version")
        value = rows[0]["v"]
        return int(value) if value is not None else 0

    def _migrate(self, target: int) -> None:
        with self.write("migrate"):
            current = self.version()
            if current > schema.LATEST_VERSION:
                raise errors.HostError(
                    f"The smolbox store at {self.path} has schema version {current}, "
                    f"newer than this smolbox understands ({schema.LATEST_VERSION})",
                    details={"path": str(self.path), "version": current,
                             "supported": schema.LATEST_VERSION},
                    help="Upgrade smolbox, or point SMOLBOX_HOME at another directory.",
                )
            for migration in schema.MIGRATIONS:
                if current < migration.version <= target:
                    # Statement by statement: executescript() would COMMIT our transaction.
                    for statement in schema.statements(migration.sql):
                        self.execute(statement, operation=f"migrate to v{migration.version}")
                    self.execute(
                        "INSERT INTO schema_version (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                        operation=f"migrate to v{migration.version}",
                    )
