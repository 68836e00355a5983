"""The inspection page shows any inspected text literally: markup, comment openers, NUL and control characters."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from rnnlab.inspection.capture import Activations
from rnnlab.inspection.html import page_data, render_page, script_json

# every sequence that can change how an HTML parser reads a <script> element or a JS string, plus every
# C0/C1 control character, NUL, the JS line terminators and an astral character
HOSTILE = ["<!--<script>", "</script>", "</SCRIPT >", "<!--", "-->", "]]>", "<![CDATA[", "<\\/script>",
           "\u2028\u2029", "\x00", "".join(map(chr, range(1, 32))) + "\x7f" + "".join(map(chr, range(0x80, 0xa0))),
           "&lt;&amp;&#x3c;", "`${alert(1)}`'\"\\", "__DATA__ __TITLE__", "\U0001f600 \ufeff \ufffd"]
TITLE = "</title><!--<script>alert(1)</script> __DATA__ \x00 \u2028"


def _acts(texts: list[str]) -> Activations:
    rng = np.random.default_rng(0)
    T = max(len(s) for s in texts)
    vals = {"h": rng.normal(size=(len(texts), T, 3)).astype(np.float32)}
    return Activations({(0, 0): vals}, np.array([len(s) for s in texts]), "rnn")


def _script_bodies(page: str) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", page, flags=re.S)


def hostile_page(texts: list[str] | None = None) -> tuple[str, list[str]]:
    """The page for ``texts`` (default: every hostile string, then all of them joined) and those texts.

    One string alone matters: ``<!--<script>`` with no ``-->`` after it is what left the script unclosed."""
    texts = HOSTILE + ["".join(HOSTILE)] if texts is None else texts
    return render_page(page_data(_acts(texts), title=TITLE, texts=texts, summary="".join(texts))), texts


PAGES = [None] + [[s, "ok"] for s in HOSTILE]


@pytest.mark.parametrize("texts", PAGES)
def test_hostile_text_round_trips_through_the_embedded_data(texts):
    page, texts = hostile_page(texts)
    bodies = _script_bodies(page)
    assert len(bodies) == 1  # one script element, closed by the template's own </script>
    payload = bodies[0].split("const DATA = ", 1)[1].split(";\n", 1)[0]
    data = json.loads(payload)  # still plain JSON: JSON.parse in the page reads the same
    assert data["text"] == texts and data["title"] == TITLE and data["summary"] == "".join(texts)
    # nothing in the data can open a comment, a script or end the element, whatever the HTML parser state
    assert "<" not in payload and ">" not in payload and "&" not in payload
    assert "\u2028" not in payload and "\u2029" not in payload and "\x00" not in payload


@pytest.mark.parametrize("texts", PAGES)
def test_hostile_text_leaves_the_page_structure_intact(texts):
    page, _ = hostile_page(texts)
    body = _script_bodies(page)[0]
    assert not re.search(r"<!--|<script|</script", body, flags=re.I)
    assert page.rstrip().endswith("</script>\n</body>\n</html>")
    # the title is escaped markup in <title>/<h1>, and a title holding "__DATA__" does not receive the payload
    assert page.count("const DATA = ") == 1
    head = page.split("<script>", 1)[0]
    assert "<title>&lt;/title&gt;&lt;!--&lt;script&gt;alert(1)&lt;/script&gt; __DATA__" in head
    assert head.count("<script") == 0 and head.count("<!--") == 0


def test_script_json_escapes_only_inside_strings():
    value = {"a<b": ["</script>", "x & y", 1.5, None, True], "\u2028": "<!--"}
    out = script_json(value)
    assert json.loads(out) == value
    assert out.startswith('{"a\\u003cb":["\\u003c/script\\u003e","x \\u0026 y",1.5,null,true]')
