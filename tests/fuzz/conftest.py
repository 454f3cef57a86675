"""The fuzz targets: bounded hypothesis runs (``-m fuzz``), seeds from ``corpus/``.

Every target is a hypothesis test with a bounded number of examples (:func:`examples`;
``XVM_FUZZ_SCALE=10`` hunts ten times longer) and no per-example deadline; a hang fails
through pytest-timeout (each target has its own ``@pytest.mark.timeout``, else 60 s from
:func:`pytest_collection_modifyitems`).  The whole directory runs in well under a minute.

The seed corpus: ``corpus/<target>/``, one small file per seed, replayed before the
target's random examples -- through hypothesis ``@example`` (:func:`replay`) or a
parametrized ``test_<target>_seeds`` -- and, for byte-level targets, mutated as their
starting points (:func:`mutated`).  Names say what a seed is: ``valid-*`` seeds must be
accepted, the others are edge cases (most of them refused, several once crashed xvm).

To add a seed (an input that mattered: a crash hypothesis found, a shape it rarely
reaches), write one file into the target's directory and run the target:

- byte formats (``elf``, ``bzimage``, ``migration``, ``snapshot``, ``protocol``, ``xml``):
  the raw bytes as the parser reads them (``snapshot``: the header and state only, the
  target extends the file to the size its header declares; ``migration``: the whole
  stream the receiver reads, HELLO with the token ``bytes(range(32))`` included);
- the others: JSON of the test's arguments, ``{"accesses": [[reg, size, write, value],
  ...]}`` and the like, bytes as hex strings (see the decode function given to
  :func:`replay`, or the target's ``*_seeds`` test);
- name it ``valid-*`` if it must be accepted.

``tests/fuzz/make_corpus.py`` regenerates the seeds that come from a real machine (the
migration STATE and the snapshot head, which need /dev/kvm) and the hostile ones derived
from them.
"""
import copy
import json
import os

import pytest
from hypothesis import HealthCheck, example, settings
from hypothesis import strategies as st

# The profile of the fuzz targets: no per-example deadline (a loaded CI machine is slow; a
# real hang is caught by pytest-timeout), no health checks, no example database (CI's
# clones start fresh anyway).  Each target sets its own max_examples through examples().
settings.register_profile("xvm-fuzz", deadline=None, suppress_health_check=list(HealthCheck), database=None)
FUZZ = settings.get_profile("xvm-fuzz")

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
# XVM_FUZZ_SCALE=10 runs every target ten times longer (local hunting; CI uses 1).
SCALE = float(os.environ.get("XVM_FUZZ_SCALE", "1"))


def examples(n):
    return max(1, int(n * SCALE))


def seeds(target, names=False):
    """The seeds of ``corpus/<target>/``, in name order: bytes, or ``(name, bytes)``."""
    directory = os.path.join(CORPUS, target)
    if not os.path.isdir(directory):
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out.append((name, f.read()) if names else f.read())
    return out


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/fuzz/" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)
            # an exception that ends a server's thread (a connection's) is a crash too
            item.add_marker(pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"))
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(60))  # a hang fails


def replay(target, decode=None):
    """A decorator: each seed of ``corpus/<target>/`` as a hypothesis ``@example`` of the
    test, run before its random examples.  ``decode(bytes)`` gives the test's arguments (a
    dict: keywords; a list: positional); by default the seed is JSON of that dict or list."""
    decode = decode or json.loads

    def wrap(test):
        for _, data in reversed(seeds(target, names=True)):
            args = decode(data)
            test = (example(**args) if isinstance(args, dict) else example(*args))(test)
        return test

    return wrap


def mutated(target, max_size=8192):
    """Seeds of ``target`` with bytes flipped, cut and appended, or fresh bytes."""
    base = seeds(target)

    @st.composite
    def mutate(draw):
        data = bytearray(draw(st.sampled_from(base)))
        for _ in range(draw(st.integers(0, 8))):
            if data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
        data += draw(st.binary(max_size=64))
        return bytes(data[:max_size])

    return st.one_of(mutate(), st.binary(max_size=max_size)) if base else st.binary(max_size=max_size)


# Values a hostile writer puts where a number, a string or a record is due.
HOSTILE_VALUES = st.one_of(
    st.sampled_from([float("inf"), float("-inf"), float("nan"), -1, 1 << 64, 10 ** 400, 1.5, "", "zz", "0" * 7,
                     [], {}, None, True, [[1, 2]], [[0, 1 << 70]], {"a": 1}]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                 max_leaves=6))


@st.composite
def hostile_tree(draw, doc):
    """A deep copy of the JSON tree ``doc`` with one to three values replaced (or keys
    removed) anywhere in it."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, doc
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.integers(0, 3))):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            parent, node = node, node[key]
        if parent is None:
            return copy.deepcopy(draw(HOSTILE_VALUES))
        if draw(st.integers(0, 4)) == 0 and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = copy.deepcopy(draw(HOSTILE_VALUES))  # sampled values are shared: never mutate them
    return doc
