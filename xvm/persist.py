"""Plain-data state for snapshots: frozen dataclasses that save to dicts of plain values.

The core never depends on a serializer: ``save()`` gives a dict of ints, strs,
bools and None (and lists of such dicts), ``restore(data)`` builds the state back.
"""
from dataclasses import asdict


class PlainState:
    """Mixin for a frozen dataclass whose fields are all plain values."""

    def save(self):
        return asdict(self)

    @classmethod
    def restore(cls, data):
        return cls(**data)
