"""`rnnlab demo` (make demo) end to end at toy sizes: comparison, char LSTM, translation, inspection page."""

from __future__ import annotations

from rnnlab.cli import main


def test_demo_runs_every_part_and_prints_the_page_path(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--lags", "3", "--lm-steps", "10", "--lm-hidden", "16", "--jobs", "1",
                 "--translate", "hello world"]) == 0
    printed = capsys.readouterr().out
    for part in ("== 1.", "== 2.", "== 3.", "== 4."):
        assert part in printed
    assert "hello  " in printed and "world  " in printed  # the translation of each word
    page = out / "charlm" / "inspect" / "index.html"
    assert f"open {page}" in printed and page.stat().st_size > 1000
    assert (out / "g2p" / "checkpoints" / "MANIFEST.json").exists()
    assert (out / "compare" / "results.md").exists()
