"""Shared CLI test helpers: a user mistake's one-line error, and a two-step char-LM run on a small text file."""

from __future__ import annotations

from pathlib import Path

from rnnlab.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``rnnlab ARGV`` in-process; assert exit 2 with exactly one stderr line and no traceback; return it."""
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2, cap.err
    assert "Traceback" not in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
    return cap.err


def tiny_charlm_run(base: Path, text: str) -> tuple[Path, Path]:
    """Train a char LM for two steps on ``text`` (written to ``base/text.txt``): (run directory, text file)."""
    path = base / "text.txt"
    path.write_text(text, encoding="utf-8")
    out = base / "run"
    assert main(["train", "charlm", "--text", str(path), "-o", "seq_len=16", "--hidden-size", "4",
                 "--embedding-dim", "4", "--batch-size", "8", "--max-steps", "2", "--backend", "reference",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    return out, path
