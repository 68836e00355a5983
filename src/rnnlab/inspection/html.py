"""A self-contained HTML page (inline JS/CSS/data, no network) that colours text or sequences by a unit.

Text models: every character of the sample is a ``<span>`` coloured by the chosen layer / direction /
gate / unit's activation after reading it (Karpathy et al. 2015; LSTMVis, Strobelt et al. 2018).  Other
tasks: one strip per sequence coloured by that unit, plus a units × time heatmap per sequence.  Values are
quantised to uint8 per gate (base64) so a page with thousands of steps stays a few MB at most.
"""

from __future__ import annotations

import base64
import html as _html
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from rnnlab.inspection.capture import Activations
from rnnlab.inspection.page import PAGE


def _quantise(v: np.ndarray) -> dict[str, object]:
    v = np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        hi = lo + 1e-12
    q = np.rint((v - lo) / (hi - lo) * 255).astype(np.uint8)
    return {"data": base64.b64encode(q.tobytes()).decode("ascii"), "lo": lo, "hi": hi,
            "signed": not (lo >= 0.0 and hi <= 1.0), "shape": list(v.shape)}


def _png_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def page_data(acts: Activations, *, title: str, texts: Sequence[str] | None = None,
              top_units: Sequence[dict] = (), images: Sequence[tuple[str, str | Path]] = (),
              summary: str = "") -> dict[str, object]:
    """The JSON payload of the page.  ``texts[b]`` is the text of sequence ``b`` (one character per step)
    for character models, ``None`` otherwise; ``images`` are (title, PNG path) pairs to inline."""
    B = len(acts.lengths)
    if texts is not None:
        if len(texts) != B:
            raise ValueError(f"texts: expected {B} strings (one per sequence), got {len(texts)}")
        for b, (s, n) in enumerate(zip(texts, acts.lengths)):
            if len(s) != int(n):
                raise ValueError(f"texts[{b}]: expected {int(n)} characters (one per step), got {len(s)}")
    layers = []
    for (layer, direction) in acts.keys:
        gates = {name: _quantise(acts.values[(layer, direction)][name]) for name in acts.gates((layer, direction))}
        layers.append({"layer": layer, "direction": direction, "gates": gates,
                       "label": f"layer {layer} {'backward ←' if direction else 'forward →'}"})
    return {"title": title, "summary": summary, "mode": "text" if texts is not None else "sequence",
            "text": list(texts) if texts is not None else [], "lengths": [int(n) for n in acts.lengths],
            "layers": layers, "top_units": list(top_units),
            "images": [{"title": t, "src": _png_uri(p)} for t, p in images]}


# Inside <script> the HTML parser looks for "</script" and, after "<!--", for "<script" (which makes a later
# "</script>" not close the element: the page goes blank).  Escaping every <, > and & as a JSON \u escape
# keeps all of them out of the element whatever the text holds; U+2028/U+2029 are line terminators to older
# JavaScript.  JSON.parse and json.loads read the escapes back as the same characters.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(data: object) -> str:
    """``data`` as JSON that is safe to paste inside a ``<script>`` element (and still valid JSON)."""
    return json.dumps(data, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def render_page(data: dict[str, object]) -> str:
    """Fill the template in one pass (a title holding ``__DATA__`` stays text); the data cannot end the script."""
    fill = {"__TITLE__": _html.escape(str(data["title"])), "__DATA__": script_json(data)}
    return re.sub("__TITLE__|__DATA__", lambda m: fill[m.group(0)], PAGE)


def write_page(path: str | Path, acts: Activations, **kwargs) -> Path:
    """Write the page for ``acts`` (see :func:`page_data` for the options) and return its path.

    Example:
        >>> import numpy as np, tempfile, os
        >>> acts = Activations({(0, 0): {"h": np.random.rand(1, 3, 2)}}, np.array([3]), "rnn")
        >>> p = write_page(os.path.join(tempfile.mkdtemp(), "i.html"), acts, title="t", texts=["abc"])
        >>> "<script>" in p.read_text()
        True
    """
    path = Path(path)
    path.write_text(render_page(page_data(acts, **kwargs)), encoding="utf-8")
    return path
