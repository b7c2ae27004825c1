"""The store's schema as an ordered list of migrations.

Why migrations instead of ``CREATE TABLE IF NOT EXISTS``: a user's database
outlives the code that created it. Each migration is applied once, in order,
inside the same ``BEGIN IMMEDIATE`` transaction that records it in
``schema_version``, so two processes opening an old database at the same time
cannot both upgrade it, and a crash mid-upgrade leaves the old version intact.

Never edit a released migration; append a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: ``version`` is what the database is at after ``sql``."""

    version: int
    description: str
    sql: str


_MACHINE_STATES = "'creating','running','paused','stopped','error','deleted'"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="machines, snapshots, images, network leases",
        sql=f"""
        CREATE TABLE machines (
            id              TEXT PRIMARY KEY,
            name            TEXT NOT NULL UNIQUE,
            state           TEXT NOT NULL CHECK (state IN ({_MACHINE_STATES})),
            config          TEXT NOT NULL,
            image_ref       TEXT NOT NULL,
            image_version   TEXT,
            accelerator     TEXT,
            pid             INTEGER,
            pid_start_time  INTEGER,
            run_dir         TEXT,
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            error_reason    TEXT
        );
        CREATE INDEX machines_state ON machines (state);
        CREATE TABLE snapshots (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            vm_id       TEXT REFERENCES machines (id) ON DELETE SET NULL,
            path        TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('pending','complete')),
            created_at  REAL NOT NULL,
            size        INTEGER,
            manifest    TEXT NOT NULL DEFAULT '{{}}'
        );
        CREATE TABLE images (
            name          TEXT NOT NULL,
            version       TEXT NOT NULL,
            path          TEXT NOT NULL,
            manifest_sha  TEXT NOT NULL,
            installed_at  REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        CREATE TABLE network_leases (
            ip          TEXT PRIMARY KEY,
            vm_id       TEXT NOT NULL UNIQUE REFERENCES machines (id) ON DELETE CASCADE,
            mac         TEXT NOT NULL,
            created_at  REAL NOT NULL
        );
        """,
    ),
    Migration(
        version=2,
        description="clone provenance (source snapshot) and the machine's IP address",
        sql="""
        ALTER TABLE machines ADD COLUMN source_snapshot TEXT;
        ALTER TABLE machines ADD COLUMN ip TEXT;
        CREATE INDEX snapshots_state ON snapshots (state);
        CREATE INDEX machines_source_snapshot ON machines (source_snapshot);
        """,
    ),
    Migration(
        version=3,
        description="intent of multi-step operations: the owning process and the operation",
        sql="""
        ALTER TABLE machines ADD COLUMN owner TEXT;
        ALTER TABLE machines ADD COLUMN operation TEXT;
        ALTER TABLE snapshots ADD COLUMN owner TEXT;
        CREATE INDEX machines_owner ON machines (owner);
        """,
    ),
    Migration(
        version=4,
        description="machine lifetime: when the machine expires (epoch seconds, NULL: never)",
        sql="""
        ALTER TABLE machines ADD COLUMN expires_at REAL;
        CREATE INDEX machines_expires_at ON machines (expires_at);
        """,
    ),
    Migration(
        version=5,
        description="VMFile declarations: digest of each declared machine and its provisioners",
        sql="""
        CREATE TABLE declarations (
            vm_id             TEXT PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
            source            TEXT NOT NULL,
            name              TEXT NOT NULL,
            declaration_sha   TEXT NOT NULL,
            provisioned       TEXT NOT NULL DEFAULT '[]',
            updated_at        REAL NOT NULL
        );
        CREATE INDEX declarations_source ON declarations (source);
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  REAL NOT NULL
)
"""


def statements(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no ';' inside literals)."""
    return [part.strip() for part in sql.split(";") if part.strip()]
