"""`rnnlab bench` produces a well-formed table and JSON (tiny run; never a timing assertion)."""

from __future__ import annotations

import json

from rnnlab import bench
from rnnlab.cli import main

ROW_KEYS = {"cell", "backend", "T", "B", "H", "mode", "ours_ms", "eager_ms", "lstm_ms", "gru_ms", "vs_lstm", "vs_gru",
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
    assert set(report["summary"]["gru"]) >= {"train_vs_lstm", "infer_vs_lstm", "train_speedup_vs_eager",
                                              "meets_vs_lstm", "meets_vs_eager", "backend"}
    assert report["summary"]["gru"]["target_train_vs_lstm"] == bench.TARGET_VS_LSTM_OTHER
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


def test_cells_all_expands_to_every_registered_cell(monkeypatch, capsys) -> None:
    from rnnlab.cells import cell_names

    seen = {}
    real = bench.run_bench

    def fake_run_bench(cells, **kw):  # records the expansion, then measures one tiny cell only
        seen["cells"] = list(cells)
        return real(cells=["rnn"], shapes=[(2, 1, 4)], repeats=1, overhead_steps=2)

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    assert main(["bench", "--cells", "all", "--quick"]) == 0
    assert seen["cells"] == list(cell_names())
    assert "median over the grid" in capsys.readouterr().out


def test_backend_column_names_the_backend_that_ran() -> None:
    report = bench.run_bench(cells=["mut2", "greff_fgr"], shapes=[(3, 2, 8)], repeats=1, overhead_steps=2)
    backends = {r["cell"]: r["backend"] for r in report["rows"]}
    from rnnlab.backends.cpp import load_kernels

    assert backends["greff_fgr"] == "reference"  # no fused kernel: it must say so, not pretend
    assert backends["mut2"] == ("cpp" if load_kernels() is not None else "reference")


def test_option_variants_report_their_backend_and_cost_against_the_plain_cell():
    from rnnlab.bench import run_bench

    specs = ["lstm", "lstm:weight_drop=0.5", "lstm:recurrent_dropout=0.25,zoneout=0.1", "lstm:record"]
    report = run_bench(cells=specs, shapes=[(6, 2, 8)], repeats=1, overhead_steps=5)
    summary = report["summary"]
    kernels = summary["lstm"]["backend"]
    assert summary["lstm:weight_drop=0.5"]["backend"] == kernels  # the dropped weight runs fused
    # what runs is reported as it is: the CPU kernels do not fuse recurrent dropout, zoneout or recording
    assert summary["lstm:recurrent_dropout=0.25,zoneout=0.1"]["backend"] == "reference"
    assert summary["lstm:record"]["backend"] == "reference"
    assert "train_vs_plain" not in summary["lstm"]
    assert all(summary[s]["train_vs_plain"] > 0 for s in specs[1:])
