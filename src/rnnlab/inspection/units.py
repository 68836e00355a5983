"""Find interpretable units: correlate each unit's activation with simple features of the input.

In the spirit of Karpathy, Johnson & Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks":
for text, features such as "inside quotes", "position in line", "bracket depth" and "is vowel"; for
real-valued sequences, the time step and each input channel (and its running sum).  Every (layer,
direction, gate, unit) gets the Pearson correlation with every feature over all valid steps; units are
ranked by the largest absolute correlation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rnnlab.inspection.capture import Activations

VOWELS = set("aeiouAEIOU")
_OPEN, _CLOSE = "([{", ")]}"


def text_features(text: str) -> dict[str, np.ndarray]:
    """Per-character features of ``text`` (each a float array of len(text)); the feature of a character
    describes the context *after* reading it, which is what the state at that step can know.

    Example:
        >>> f = text_features('a "(b)"\\nc')
        >>> f["inside quotes"].tolist()
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        >>> f["bracket depth"].tolist()
        [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        >>> f["position in line"].tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 1.0]
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    n = len(text)
    quote = np.zeros(n)
    depth = np.zeros(n)
    pos = np.zeros(n)
    inside, d, col = False, 0, 0
    for k, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        if ch in _OPEN:
            d += 1
        elif ch in _CLOSE:
            d = max(d - 1, 0)
        col = 0 if ch == "\n" else col + 1
        quote[k], depth[k], pos[k] = float(inside), float(d), float(col)
    arr = np.array(list(text)) if n else np.array([], dtype="<U1")
    as_float = lambda m: np.asarray(m, dtype=float)  # noqa: E731
    return {
        "inside quotes": quote,
        "position in line": pos,
        "bracket depth": depth,
        "is vowel": as_float([c in VOWELS for c in text]),
        "is space": as_float(arr == " "),
        "is newline": as_float(arr == "\n"),
        "is uppercase": as_float([c.isupper() for c in text]),
        "is punctuation": as_float([(not c.isalnum()) and not c.isspace() for c in text]),
    }


def sequence_features(x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Features of real-valued inputs ``x`` (B, T, F): the time step, each channel and its running sum.

    Returned arrays are (B, T); positions past a sequence's length are ignored later by the mask.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 3:
        raise ValueError(f"x: expected (B, T, F) inputs, got shape {x.shape}")
    B, T, F = x.shape
    feats = {"time step": np.broadcast_to(np.arange(T, dtype=float), (B, T)).copy()}
    valid = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    for k in range(min(F, 16)):  # wide inputs (e.g. one-hot) would give too many features to be useful
        ch = np.where(valid, x[:, :, k], 0.0)
        feats[f"input {k}"] = ch
        feats[f"running sum of input {k}"] = np.cumsum(ch, axis=1)
    return feats


def _corr(a: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``a`` (N, H) with ``f`` (N,); constant columns give 0."""
    a = a - a.mean(0)
    f = f - f.mean()
    denom = np.sqrt((a * a).sum(0) * (f * f).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * f[:, None]).sum(0) / denom
    return np.where(denom > 1e-12, r, 0.0)


def rank_units(acts: Activations, features: dict[str, np.ndarray], *, top: int = 20,
               gates: Sequence[str] | None = None) -> dict[str, object]:
    """Correlate every unit with every feature and rank.

    ``features`` map a name to a (B, T) array (or (T,) when B = 1) aligned with the activations.
    Returns a JSON-ready dict: ``features`` (names), ``top_units`` (the ``top`` units by best |r|, each
    ``{layer, direction, gate, unit, feature, r}``) and ``by_feature`` (feature -> its 5 best units).

    Example:
        >>> import numpy as np
        >>> acts = Activations({(0, 0): {"h": np.arange(6.0).reshape(1, 6, 1)}}, np.array([6]), "rnn")
        >>> rank_units(acts, {"t": np.arange(6.0)})["top_units"][0]["r"]
        1.0
    """
    B = len(acts.lengths)
    T = next(iter(acts.values[acts.keys[0]].values())).shape[1]
    valid = (np.arange(T)[None, :] < acts.lengths[:, None]).reshape(-1)  # (B*T,)
    flat_feats = {}
    for name, f in features.items():
        f = np.asarray(f, dtype=float).reshape(B, -1) if np.ndim(f) == 1 else np.asarray(f, dtype=float)
        if f.shape != (B, T):
            raise ValueError(f"features[{name!r}]: expected shape {(B, T)}, got {f.shape}")
        flat_feats[name] = f.reshape(-1)[valid]
    rows = []
    for (layer, direction) in acts.keys:
        for gate, v in acts.values[(layer, direction)].items():
            if gates is not None and gate not in gates:
                continue
            a = v.reshape(B * T, -1)[valid].astype(float)  # (N, H)
            for name, f in flat_feats.items():
                r = _corr(a, f)
                for unit in range(a.shape[1]):
                    rows.append((abs(r[unit]), layer, direction, gate, unit, name, float(r[unit])))
    rows.sort(key=lambda row: -row[0])

    def as_dict(row) -> dict[str, object]:
        _, layer, direction, gate, unit, name, r = row
        return {"layer": layer, "direction": direction, "gate": gate, "unit": unit, "feature": name,
                "r": round(r, 4)}

    best, seen = [], set()
    for row in rows:  # one entry per unit: its best feature
        key = row[1:5]
        if key not in seen:
            seen.add(key)
            best.append(as_dict(row))
        if len(best) >= top:
            break
    by_feature = {name: [as_dict(r) for r in rows if r[5] == name][:5] for name in flat_feats}
    return {"features": list(flat_feats), "top_units": best, "by_feature": by_feature}
