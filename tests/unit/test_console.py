"""The domain console: a bounded log the guest fills, read() and expect() for scripts, write() for input.

The machine side is driven the way Domain drives it: ``_feed`` is the serial sink,
``_attach``/``_detach`` bracket each run of the guest.
"""
import os
import re
import threading
import time

import pytest

from xvm.console import Console
from xvm.errors import ConfigError, ConsoleTimeout, StateError, XvmError


class Input:
    def __init__(self):
        self.data = bytearray()

    def __call__(self, data):
        self.data += data


@pytest.fixture
def console():
    c = Console()
    c.input = Input()
    c._attach(c.input)
    return c


def feed_later(console, chunks, delay=0.02):
    """Feed ``chunks`` from another thread, as a vCPU thread does; returns the started thread."""

    def run():
        for chunk in chunks:
            time.sleep(delay)
            console._feed(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# --- read ------------------------------------------------------------------------------


def test_read_returns_only_new_bytes(console):
    assert console.read() == b""
    console._feed(b"Booting ")
    console._feed(b"Linux\n")
    assert console.read() == b"Booting Linux\n"
    assert console.read() == b""
    console._feed(b"login: ")
    assert console.read() == b"login: "


def test_log_and_text_keep_everything(console):
    console._feed(b"caf\xc3\xa9 ")
    console.read()
    console._feed(b"\xff")
    assert console.log() == b"caf\xc3\xa9 \xff"
    assert console.text() == "caf\u00e9 \ufffd"


def test_read_and_expect_positions_are_independent(console):
    console._feed(b"one two")
    console.expect("one", timeout=0)
    assert console.read() == b"one two"
    assert console.expect("two", timeout=0).group() == "two"


# --- expect ----------------------------------------------------------------------------


def test_expect_str_pattern_returns_a_text_match(console):
    console._feed(b"Linux version 6.1.0-18-amd64 (debian)\n")
    match = console.expect(r"Linux version (\S+)", timeout=0)
    assert match.group(1) == "6.1.0-18-amd64"


def test_expect_bytes_pattern_returns_a_bytes_match(console):
    console._feed(b"\x1b[0mready\r\n")
    match = console.expect(rb"\x1b\[0m(\w+)", timeout=0)
    assert match.group(1) == b"ready"


def test_expect_accepts_a_compiled_pattern(console):
    console._feed(b"LOGIN: ")
    assert console.expect(re.compile("login:", re.I), timeout=0).group() == "LOGIN:"


def test_successive_expects_consume(console):
    console._feed(b"prompt# ls\nprompt# ")
    console.expect("prompt# ", timeout=0)
    console.expect("prompt# ", timeout=0)  # the second prompt, not the first again
    with pytest.raises(ConsoleTimeout):
        console.expect("prompt# ", timeout=0)
    console._feed(b"prompt# ")
    console.expect("prompt# ", timeout=0)


def test_expect_consumes_only_up_to_the_match(console):
    console._feed(b"a1 b2 a3")
    assert console.expect(r"a\d", timeout=0).group() == "a1"
    assert console.expect(r"b\d", timeout=0).group() == "b2"
    assert console.expect(r"a\d", timeout=0).group() == "a3"


def test_consumed_length_counts_utf8_bytes(console):
    # A str match is on decoded text; the position advanced must be in bytes.
    console._feed("\u00e9\u00e9\u00e9\u00e9 X \u00e9 Y".encode())  # 4 characters, 8 bytes before " X"
    console.expect("X", timeout=0)
    with pytest.raises(ConsoleTimeout):
        console.expect("X", timeout=0)  # consumed: counting characters as bytes would find it again
    assert console.expect(r"\S+ Y", timeout=0).group() == "\u00e9 Y"


def test_undecodable_bytes_do_not_shift_positions(console):
    console._feed(b"\xff\xfeA\xffB")
    assert console.expect("A", timeout=0).group() == "A"
    assert console.expect(rb"\xffB", timeout=0).group() == b"\xffB"


def test_expect_matches_across_chunked_feeds_from_another_thread(console):
    thread = feed_later(console, [b"Welc", b"ome to Deb", b"ian GNU/Li", b"nux 12!\n"])
    try:
        match = console.expect(r"Welcome to (\w+) GNU/Linux (\d+)", timeout=10)
    finally:
        thread.join()
    assert match.groups() == ("Debian", "12")


def test_a_match_at_the_newest_byte_waits_for_the_rest_of_the_line(console):
    # The guest's line arrives in two pieces; ``(.*)`` must not return the first half.
    console._feed(b"echo: hello from th")
    thread = feed_later(console, [b"e notebook\n"], delay=0.01)
    try:
        assert console.expect(r"echo: (.*)", timeout=10).group(1) == "hello from the notebook"
    finally:
        thread.join()


def test_a_match_at_the_newest_byte_is_returned_when_nothing_follows(console):
    console._feed(b"login: ")
    started = time.monotonic()
    assert console.expect("login: ", timeout=10)
    assert time.monotonic() - started < 5


def test_expect_matches_a_multibyte_character_split_across_feeds(console):
    thread = feed_later(console, [b"caf\xc3", b"\xa9 ok"])
    try:
        assert console.expect("caf\u00e9 ok", timeout=10)
    finally:
        thread.join()


def test_timeout_raises_console_timeout_with_the_tail(console):
    console._feed(b"[    0.000000] Linux version\n" + b"." * 3000 + b"Kernel panic - not syncing")
    started = time.monotonic()
    with pytest.raises(ConsoleTimeout) as info:
        console.expect("login:", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, XvmError)
    assert err.pattern == "login:" and err.timeout == 0.2
    assert err.tail.endswith(b"Kernel panic - not syncing")
    assert "no match for 'login:' within 0.2s" in str(err)
    assert str(err).endswith("Kernel panic - not syncing")
    assert len(str(err)) < 2200  # only the tail is shown


def test_timeout_tail_excludes_consumed_output(console):
    console._feed(b"secret-old-output MARK fresh")
    console.expect("MARK", timeout=0)
    with pytest.raises(ConsoleTimeout) as info:
        console.expect("never", timeout=0)
    assert info.value.tail == b" fresh"


def test_timeout_does_not_consume(console):
    console._feed(b"abc")
    with pytest.raises(ConsoleTimeout):
        console.expect("x", timeout=0)
    assert console.expect("abc", timeout=0)


def test_expect_on_a_detached_console_raises_state_error(console):
    console._feed(b"reboot: Power down\n")
    console._detach("the domain was shut off")
    with pytest.raises(StateError, match=r"console closed \(the domain was shut off\) before 'login:' appeared"):
        console.expect("login:", timeout=5)


def test_expect_on_a_detached_console_still_finds_logged_output(console):
    console._feed(b"bye\n")
    console._detach("the domain was shut off")
    assert console.expect("bye", timeout=0)


def test_never_attached_console_raises_state_error():
    with pytest.raises(StateError, match="the domain is not running"):
        Console().expect("x", timeout=5)


def test_detach_wakes_a_waiting_expect(console):
    def stop():
        time.sleep(0.05)
        console._detach("the domain crashed")

    thread = threading.Thread(target=stop)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(StateError, match="the domain crashed"):
            console.expect("never", timeout=10)
    finally:
        thread.join()
    assert time.monotonic() - started < 5


# --- log limit -------------------------------------------------------------------------


def test_log_limit_drops_the_oldest_bytes():
    console = Console(limit=10)
    console._feed(b"0123456789")
    console._feed(b"abcd")
    assert console.log() == b"456789abcd"
    assert console.end == 14
    console._feed(b"x" * 25)  # one feed longer than the limit
    assert console.log() == b"x" * 10
    assert console.end == 39


def test_read_stays_correct_across_the_drop():
    console = Console(limit=10)
    console._feed(b"0123456")
    assert console.read() == b"0123456"
    console._feed(b"789ab")  # drops "01"; the unread part is intact
    assert console.read() == b"789ab"
    console._feed(b"c" * 30)  # more than the limit since the last read: oldest unread bytes are gone
    assert console.read() == b"c" * 10
    assert console.read() == b""


def test_expect_stays_correct_across_the_drop():
    console = Console(limit=16)
    console._attach(Input())
    console._feed(b"AAAA MARK1 BBBB")
    console.expect("MARK1", timeout=0)
    console._feed(b"0123456789 MARK2")  # drops everything up to and past MARK1
    assert console.expect(r"\d+ MARK2", timeout=0).group() == "0123456789 MARK2"
    with pytest.raises(ConsoleTimeout):
        console.expect("MARK", timeout=0)  # neither mark is found again
    console._feed(b"zzzzzzzzzzzzzzzzzzzz MARK3")
    assert console.expect("MARK.", timeout=0).group() == "MARK3"


def test_expect_position_inside_dropped_bytes_resumes_at_the_oldest_kept():
    console = Console(limit=8)
    console._attach(Input())
    console._feed(b"ab")
    console.expect("a", timeout=0)  # position 1
    console._feed(b"cdefghijk")  # log is now "defghijk": position 1 was dropped
    assert console.expect("d", timeout=0).group() == "d"
    assert console.expect("e", timeout=0).group() == "e"


# --- write -----------------------------------------------------------------------------


def test_write_forwards_bytes_to_the_attached_sink(console):
    console.write(b"root\n")
    console.write("echo caf\u00e9\n")
    assert bytes(console.input.data) == b"root\necho caf\xc3\xa9\n"


def test_write_accepts_bytearray_and_memoryview(console):
    console.write(bytearray(b"ab"))
    console.write(memoryview(b"cd"))
    assert bytes(console.input.data) == b"abcd"


def test_write_to_a_detached_console_raises_state_error(console):
    console._detach("the domain was destroyed")
    with pytest.raises(StateError, match="^cannot write to the console: the domain was destroyed$"):
        console.write(b"x")
    assert console.input.data == b""


def test_write_to_a_never_attached_console_raises_state_error():
    with pytest.raises(StateError, match="the domain is not running"):
        Console().write("x")


def test_reattach_after_reboot_keeps_the_log(console):
    console._feed(b"first boot\n")
    console._detach("the domain was rebooted")
    second = Input()
    console._attach(second)
    console._feed(b"second boot\n")
    console.write(b"y")
    assert second.data == b"y" and console.input.data == b""
    assert console.read() == b"first boot\nsecond boot\n"


def test_subscribe_from_an_offset():
    """A client that has the first ``offset`` bytes gets the rest; from bytes no longer
    retained it starts at the oldest (its ``start`` says so); past the end is refused."""
    console = Console(limit=10)
    console._feed(b"0123456789abcdef")  # 0-5 dropped
    got = []
    assert console.subscribe(lambda event, payload: got.append((event, payload)), offset=12).start == 12
    assert got[0] == ("data", b"cdef")
    got = []
    subscription = console.subscribe(lambda event, payload: got.append((event, payload)), offset=2)
    assert subscription.start == 6 and got[0] == ("data", b"6789abcdef")
    with pytest.raises(ConfigError, match=r"^console offset 17 is past the end of the output \(16 bytes so far\)$"):
        console.subscribe(lambda event, payload: None, offset=17)


# --- the console log file (log/<name>.log) ---------------------------------------------


def test_console_log_rotates_on_its_descriptors_alone(tmp_path):
    """Rotation needs no path: the log directory moved away (as good as unreachable, like a
    confined VMM's, which sees no log directory and may not rename in it) changes nothing."""
    from xvm.vmm.vmm import ConsoleLog

    logs = tmp_path / "log"
    logs.mkdir()
    log = ConsoleLog(str(logs / "web.log"), limit=10)
    log.write(b"0123456")
    moved = tmp_path / "elsewhere"
    os.rename(logs, moved)
    log.write(b"789")  # exactly the limit: no rotation yet
    log.write(b"abc")  # would pass it: the full log becomes .log.1
    log.write(b"de")
    log.close()
    assert (moved / "web.log").read_bytes() == b"abcde"
    assert (moved / "web.log.1").read_bytes() == b"0123456789"
    log = ConsoleLog(str(moved / "web.log"), limit=10)  # reopened: appends, rotates again
    log.write(b"fghij")
    log.write(b"k")
    log.close()
    assert (moved / "web.log").read_bytes() == b"k"
    assert (moved / "web.log.1").read_bytes() == b"abcdefghij"  # the older rotation replaced


def test_console_log_limit_from_the_environment(tmp_path, monkeypatch):
    from xvm.errors import ConfigError
    from xvm.vmm.vmm import CONSOLE_LOG_LIMIT, ConsoleLog

    assert ConsoleLog(str(tmp_path / "a.log")).limit == CONSOLE_LOG_LIMIT
    monkeypatch.setenv("XVM_CONSOLE_LOG_LIMIT", "4096")
    assert ConsoleLog(str(tmp_path / "b.log")).limit == 4096
    for bad in ("0", "-5", "4k"):
        monkeypatch.setenv("XVM_CONSOLE_LOG_LIMIT", bad)
        with pytest.raises(ConfigError, match="XVM_CONSOLE_LOG_LIMIT"):
            ConsoleLog(str(tmp_path / "c.log"))
