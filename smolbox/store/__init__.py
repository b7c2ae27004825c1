"""smolbox's state store: SQLite (WAL), versioned schema, one writer across processes.

Why SQLite: the local engine has no daemon, so several smolbox processes (CLI
calls, the REST server, SDK users) share state through a file; SQLite gives them
transactions and locking without a server. Import the public names from here.
"""

from smolbox.store.records import ImageRecord, Lease, MachineRecord, SnapshotRecord, SnapshotState
from smolbox.store.store import Store

__all__ = ["ImageRecord", "Lease", "MachineRecord", "SnapshotRecord", "SnapshotState", "Store"]
