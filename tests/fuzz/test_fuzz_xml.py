"""Fuzz targets: the libvirt domain XML parser (:func:`xvm.xml.config_from_xml`) on what a
hostile client sends (``xvm define file.xml``, xvmd's DefineXML).

Either the document is refused with a :class:`ConfigError` -- quickly, whatever its size
or shape -- or it gives a valid :class:`DomainConfig` that survives xvm's own writer:
``config_from_xml(config_to_xml(cfg))`` is the same config, with no warnings.

- :func:`test_domain_xml_bytes`: the seeds' bytes flipped, cut and appended, or random;
- :func:`test_domain_xml_tree`: the seeds parsed and changed as trees (elements removed,
  duplicated or moved; texts and attributes replaced with hostile values; unknown elements
  and attributes added), so that the examples stay well-formed and reach the reader's
  checks rather than stopping at the XML parser.

Seeds: ``corpus/xml/*.xml`` (``valid-*`` must parse; every other one must be refused).
"""
import copy
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FUZZ, examples, mutated, seeds
from xvm import xml as X
from xvm.errors import ConfigError

SEEDS = dict(seeds("xml", names=True))


def check(text):
    try:
        config, _ = X.config_from_xml(text)
    except ConfigError:
        return None
    again, warnings = X.config_from_xml(X.config_to_xml(config))
    assert again == config and warnings == []
    return config


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_domain_xml_seeds(name):
    config = check(SEEDS[name])
    assert (config is not None) == name.startswith("valid"), name


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(150))
@given(mutated("xml", max_size=4096))
def test_domain_xml_bytes(text):
    check(text)


VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "64", "4294967296", "9" * 40, "1e9", "0x10", "NaN", "Infinity", " 64 ",
                     "MiB", "TiB", "b", "virtio", "pci", "mmio", "network", "bridge", "file", "disk", "vda", "hda",
                     "/", "/dev/null", "../../etc/passwd", "52:54:00:12:34:56", "ff:ff:ff:ff:ff:ff", "x" * 300,
                     "4dea24b3-1d52-d8f3-2516-782e98a23fa0", "destroy", "restart", "yes", "no"]),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12))
TAGS = st.sampled_from(["name", "uuid", "memory", "currentMemory", "vcpu", "os", "type", "kernel", "initrd",
                        "cmdline", "devices", "disk", "source", "target", "driver", "interface", "mac", "model",
                        "mtu", "serial", "readonly", "metadata", "on_poweroff", "features", "cpu", "hostdev", "x"])
ATTRS = st.sampled_from(["unit", "type", "device", "file", "dev", "bus", "address", "network", "bridge", "size",
                         "cache", "arch", "machine", "placement", "port", "mode", "x"])


@st.composite
def changed_trees(draw):
    root = ET.fromstring(SEEDS[draw(st.sampled_from(sorted(n for n in SEEDS if n.startswith("valid"))))])
    for _ in range(draw(st.integers(1, 6))):
        elements = list(root.iter())
        el = draw(st.sampled_from(elements))
        parents = {child: parent for parent in elements for child in parent}
        what = draw(st.sampled_from(["text", "attr", "drop-attr", "remove", "duplicate", "add", "move"]))
        if what == "text":
            el.text = draw(VALUES)
        elif what == "attr":
            el.set(draw(ATTRS), draw(VALUES))
        elif what == "drop-attr" and el.attrib:
            del el.attrib[draw(st.sampled_from(sorted(el.attrib)))]
        elif what in ("remove", "duplicate", "move") and el in parents:
            parent = parents[el]
            if what == "remove":
                parent.remove(el)
            elif what == "duplicate":
                parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(el))
            else:
                parent.remove(el)
                target = draw(st.sampled_from([e for e in root.iter()]))
                target.append(el)
        elif what == "add":
            child = ET.SubElement(el, draw(TAGS))
            if draw(st.booleans()):
                child.text = draw(VALUES)
    return ET.tostring(root, encoding="unicode")


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=examples(150))
@given(changed_trees())
def test_domain_xml_tree(text):
    check(text)
