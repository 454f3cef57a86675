"""Checks on the HTML xvm's rich display produces (loaded by path by the display tests).

``check(html)`` parses it twice: html5lib in strict mode (any parse error fails: bad
nesting, stray end tags, NUL characters...) and html.parser for structure, and returns
a :class:`Doc`: the tags seen, every table (by class) as header and rows of cell text,
the text of ``<pre>`` elements.  Fails if a ``<script>`` element or an event-handler
attribute appears anywhere.
"""
import html.parser

import html5lib

VOID = {"br", "hr", "img", "input", "meta", "link", "col", "wbr"}


class Doc(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.tags = []
        self.tables = {}  # class -> {"header": [...], "rows": [[...]]}
        self.pres = []
        self.classes = set()
        self._table = None
        self._row = None
        self._cell = None
        self._pre = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        assert tag != "script", "a <script> element in xvm's display"
        assert not any(name.startswith("on") for name in attrs), f"an event handler attribute: {attrs}"
        self.tags.append(tag)
        if "class" in attrs:
            self.classes.update(attrs["class"].split())
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), {"header": [], "rows": []})
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th") and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._table is not None:
            in_head = "thead" in self.stack
            if in_head:
                self._table["header"] = self._row
            else:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "pre":
            self.pres.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._pre is not None:
            self._pre.append(data)


def check(markup):
    html5lib.HTMLParser(strict=True).parseFragment(markup)  # raises html5lib ParseError
    doc = Doc()
    doc.feed(markup)
    doc.close()
    assert not doc.stack, f"unclosed elements: {doc.stack}"
    return doc
