"""The live migration's first pass over guest RAM (xvm.migration.precopy): which pages hold
data and go on the wire, and which go as zero ranges."""
import mmap

from hypothesis import given, settings
from hypothesis import strategies as st

from xvm.kvm.memory import PAGE_SIZE
from xvm.migration.precopy import nonzero_page_runs

PAGES = 48


def reference_runs(data, start, end):
    """The maximal runs of pages holding a non-zero byte, the obvious way."""
    runs = []
    for page in range(start, end, PAGE_SIZE):
        if any(data[page:page + PAGE_SIZE]):
            if runs and runs[-1][1] == page:
                runs[-1] = (runs[-1][0], page + PAGE_SIZE)
            else:
                runs.append((page, page + PAGE_SIZE))
    return runs


# each page: zero, or one non-zero byte somewhere in it (first, last, or inside)
page_kinds = st.lists(st.one_of(st.none(), st.integers(0, PAGE_SIZE - 1)), min_size=PAGES, max_size=PAGES)


@settings(max_examples=200, deadline=None)
@given(page_kinds, st.integers(0, PAGES), st.integers(0, PAGES))
def test_nonzero_page_runs_are_exactly_the_pages_holding_data(kinds, a, b):
    start, end = min(a, b) * PAGE_SIZE, max(a, b) * PAGE_SIZE
    with mmap.mmap(-1, PAGES * PAGE_SIZE) as mapping:
        for page, at in enumerate(kinds):
            if at is not None:
                mapping[page * PAGE_SIZE + at] = 0x5A
        runs = nonzero_page_runs(mapping, start, end)
        assert runs == reference_runs(bytes(mapping), start, end)
        # what is not in a run is zero: the destination may leave it as a hole
        covered = {p for s, e in runs for p in range(s, e, PAGE_SIZE)}
        for page in range(start, end, PAGE_SIZE):
            if page not in covered:
                assert mapping[page:page + PAGE_SIZE] == bytes(PAGE_SIZE)


def test_a_page_whose_only_data_is_its_last_byte_is_sent():
    with mmap.mmap(-1, 4 * PAGE_SIZE) as mapping:
        mapping[2 * PAGE_SIZE - 1] = 1
        assert nonzero_page_runs(mapping, 0, 4 * PAGE_SIZE) == [(PAGE_SIZE, 2 * PAGE_SIZE)]
