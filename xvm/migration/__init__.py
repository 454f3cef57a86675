"""Snapshots (save and restore) and live migration of running domains.

:mod:`.snapshot` is the file format: :func:`~.snapshot.write_snapshot` and the
checking loader :func:`~.snapshot.load_snapshot`.  Live migration: :mod:`.live` (the
hosts' part), :mod:`.precopy` (the VMMs'), :mod:`.stream` (the wire protocol),
:mod:`.tls` (certificates, and a test CA).
"""
from .snapshot import Snapshot, SnapshotError, load_snapshot, write_snapshot

__all__ = ["Snapshot", "SnapshotError", "load_snapshot", "write_snapshot"]
