"""Reading pytest's --junitxml output back into per-node-id outcomes.

The outer pytest (on a PVM host) runs the tests/hvm items inside the test host with
``--junitxml`` and then reports, for each of its own items, the inner outcome of the same node
id. JUnit XML names a test by (classname, name), which pytest derives from the node id
(``_pytest.junitxml.mangle_test_address``); :func:`junit_key` does the same.
"""
import dataclasses
import re
import xml.etree.ElementTree as ET


@dataclasses.dataclass(frozen=True)
class Outcome:
    outcome: str  # "passed", "failed", "error", "skipped", "xfailed"
    message: str = ""
    text: str = ""
    time: float = 0.0
    properties: tuple = ()  # (name, value) pairs from record_property


def junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a node id, as pytest's junitxml plugin writes them."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def read_junit(path) -> dict[tuple[str, str], Outcome]:
    """{(classname, name): Outcome} for every testcase in a pytest junit XML file."""
    root = ET.parse(path).getroot()
    outcomes = {}
    for case in root.iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        time = float(case.get("time") or 0.0)
        properties = tuple((p.get("name"), p.get("value")) for p in case.iter("property"))
        outcome = Outcome("passed", time=time, properties=properties)
        for child in case:
            message = child.get("message", "")
            text = child.text or ""
            if child.tag == "failure":
                outcome = Outcome("failed", message, text, time, properties)
            elif child.tag == "error":
                outcome = Outcome("error", message, text, time, properties)
            elif child.tag == "skipped" and outcome.outcome == "passed":
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                outcome = Outcome(kind, message, text, time, properties)
        # A teardown error makes a second <testcase> for the same test: keep the worst.
        previous = outcomes.get(key)
        if previous is None or _rank(outcome) > _rank(previous):
            outcomes[key] = outcome
    return outcomes


def _rank(outcome: Outcome) -> int:
    return {"passed": 0, "xfailed": 1, "skipped": 1, "failed": 2, "error": 3}[outcome.outcome]
