"""`rnnlab bench` produces a well-formed table and JSON (tiny run; never a timing assertion)."""

from __future__ import annotations

import json

from rnnlab import bench
from rnnlab.cli import main

ROW_KEYS = {"cell", "T", "B", "H", "mode", "ours_ms", "eager_ms", "lstm_ms", "gru_ms", "vs_lstm", "vs_gru",
            "speedup_vs_eager", "gflops", "peak_fraction"}


def test_run_bench_report_is_well_formed() -> None:
    report = bench.run_bench(cells=["gru", "rnn"], shapes=[(4, 2, 8)], repeats=1, overhead_steps=5)
    assert set(report) == {"settings", "gemm_peak_gflops", "rows", "overhead", "summary"}
    assert report["gemm_peak_gflops"] > 0
    rows = report["rows"]
    assert len(rows) == 4  # 2 cells x (train, infer)
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["ours_ms"] > 0 and r["vs_lstm"] > 0 and r["speedup_vs_eager"] > 0
        assert 0 < r["peak_fraction"] < 10
    assert set(report["overhead"]) == {"gru", "rnn"}
    assert set(report["summary"]["gru"]) >= {"train_vs_lstm", "infer_vs_lstm", "train_speedup_vs_eager"}
    json.dumps(report)  # serialisable
    table = bench.format_table(report)
    assert "GEMM peak" in table and "per-step overhead" in table and table.count("\ngru ") == 2


def test_cli_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    rc = main(["bench", "--cells", "lstm", "--shapes", "3,2,8", "--repeats", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [r["mode"] for r in data["rows"]] == ["train", "infer"]
    assert "median over the grid" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(capsys) -> None:
    assert main(["bench", "--shapes", "3,2"]) == 2
    assert "--shapes" in capsys.readouterr().err
    assert main(["bench", "--cells", "nope"]) == 2
    assert "--cells" in capsys.readouterr().err
