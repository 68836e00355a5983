"""Attention pictures of a seq2seq model: one heatmap per word, output tokens down, source characters across."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch


def attention_matrices(model: Any, task: Any, words: Sequence[str]) -> list[dict[str, Any]]:
    """Greedy-decode ``words`` and return, per word, its characters, the output phonemes and the attention
    matrix (one row per output phoneme plus the EOS step, one column per character; each row sums to 1)."""
    if model.attention is None:
        raise ValueError("model: it was trained with attention='none'; there is no attention to draw")
    ids = [task.encode_word(w) for w in words]
    src = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.int64)
    for row, i in enumerate(ids):
        src[row, :len(i)] = torch.tensor(i)
    lengths = torch.tensor([len(i) for i in ids], dtype=torch.int64)
    model.eval()
    tokens, n, att = model.greedy(src, lengths)  # att (B, T, S)
    out = []
    for b, w in enumerate(words):
        steps = min(int(n[b]) + 1, att.shape[1])  # the phonemes and the step that emitted EOS
        phonemes = task.decode_phonemes(tokens[b, :int(n[b])].tolist())
        matrix = att[b, :steps, :len(w)]  # (steps, characters): padded columns have weight 0
        out.append({"word": w, "phonemes": phonemes, "rows": phonemes + ["</s>"][:steps - len(phonemes)],
                    "attention": [[round(float(v), 6) for v in row] for row in matrix]})
    return out


def save_attention_plot(items: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One heatmap per :func:`attention_matrices` item in a row of panels, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(items), figsize=(2.2 + 2.0 * len(items), 3.4), squeeze=False)
    for ax, item in zip(axes[0], items):
        ax.imshow(item["attention"], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(item["word"])), list(item["word"]))
        ax.set_yticks(range(len(item["rows"])), item["rows"], fontsize=7)
        ax.set_title(item["word"], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def inspect_seq2seq(model: Any, task: Any, out: str | Path, *, split: str = "val", count: int = 4,
                    title: str = "") -> dict[str, Any]:
    """Write ``attention.png`` and ``attention.json`` for the first ``count`` words of ``split`` into ``out``."""
    words = [w for w, _ in task.words[split][:count]]
    if not words:
        raise ValueError(f"split: the {split!r} split has no words")
    items = attention_matrices(model, task, words)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_attention_plot(items, out / "attention.png", title)
    (out / "attention.json").write_text(json.dumps(items, indent=1), encoding="utf-8")
    return {"files": ["attention.png", "attention.json"], "words": items}
