"""Snapshots (save and restore) of running domains.

:mod:`.snapshot` is the file format: :func:`~.snapshot.write_snapshot` and the
checking loader :func:`~.snapshot.load_snapshot`.
"""
from .snapshot import Snapshot, SnapshotError, load_snapshot, write_snapshot

__all__ = ["Snapshot", "SnapshotError", "load_snapshot", "write_snapshot"]
