"""`rnnlab bench` produces a well-formed table and JSON (tiny run; never a timing assertion)."""

from __future__ import annotations

import json

import pytest

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


def test_gemm_flops_count_every_matrix_weight_and_no_diagonal_one() -> None:
    """FGR's gate-to-gate W_gg (3H, 3H) is a GEMM per step like W_hh; peepholes are element-wise."""
    import rnnlab

    H, I, T, B = 4, 3, 5, 2
    fgr = rnnlab.Recurrent("greff_fgr", I, H).layer_params(0)
    assert "weight_gg" in fgr and "weight_ci" in fgr
    assert bench.gemm_flops(fgr, T, B) == 2.0 * T * B * (4 * H * I + 4 * H * H + 9 * H * H)
    assert bench.gemm_flops(rnnlab.Recurrent("indrnn", I, H).layer_params(0), T, B) == 2.0 * T * B * H * I


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
    report = bench.run_bench(cells=["mut2", "mingru:scan=log"], shapes=[(3, 2, 8)], repeats=1, overhead_steps=2)
    backends = {r["cell"]: r["backend"] for r in report["rows"]}
    from rnnlab.backends.cpp.generic_loader import load_generic

    assert backends["mingru:scan=log"] == "reference"  # no fused kernel: it must say so, not pretend
    assert backends["mut2"] == ("cpp" if load_generic() is not None else "reference")


def test_option_variants_report_their_backend_and_cost_against_the_plain_cell():
    from rnnlab.bench import run_bench

    specs = ["lstm", "lstm:weight_drop=0.5", "lstm:recurrent_dropout=0.25,zoneout=0.1", "lstm:record"]
    report = run_bench(cells=specs, shapes=[(6, 2, 8)], repeats=1, overhead_steps=5)
    summary = report["summary"]
    kernels = summary["lstm"]["backend"]
    assert summary["lstm:weight_drop=0.5"]["backend"] == kernels  # the dropped weight runs fused
    # what runs is reported as it is: the generic driver fuses recurrent dropout, zoneout and recording
    assert summary["lstm:recurrent_dropout=0.25,zoneout=0.1"]["backend"] == kernels
    assert summary["lstm:record"]["backend"] == kernels
    assert "train_vs_plain" not in summary["lstm"]
    assert all(summary[s]["train_vs_plain"] > 0 for s in specs[1:])
    # the plain cell is a peer of the variant's own row (same interleaved repeats), so it needs no row of its own
    alone = run_bench(cells=["gru:weight_drop=0.5"], shapes=[(6, 2, 8)], repeats=1, overhead_steps=5)
    rows = alone["rows"]
    assert all(r["plain_ms"] > 0 and r["vs_plain"] == pytest.approx(r["ours_ms"] / r["plain_ms"]) for r in rows)
    train = [r["vs_plain"] for r in rows if r["mode"] == "train"]
    assert alone["summary"]["gru:weight_drop=0.5"]["train_vs_plain"] == pytest.approx(train[0])


def _fake_cuda(monkeypatch) -> None:
    """What a CUDA machine answers to the device queries (no GPU here: only the metadata path is exercised)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(bench, "_nvidia_driver", lambda: "550.54.15")


def test_device_cuda_without_a_gpu_exits_2_naming_the_option(monkeypatch, capsys) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "run_bench", lambda **kw: pytest.fail("measured without a device"))
    assert main(["bench", "--device", "cuda", "--cells", "rnn", "--shapes", "2,1,4", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device" in err and "got --device cuda" in err
    assert main(["bench", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_cpu_report_names_its_device() -> None:
    meta = bench.device_metadata("cpu")
    assert meta["type"] == "cpu" and "gpu" not in meta


def test_device_cuda_reaches_the_benchmark_and_its_json_names_gpu_driver_and_versions(monkeypatch, tmp_path,
                                                                                        capsys) -> None:
    import triton  # noqa: F401  (the metadata names its version)

    _fake_cuda(monkeypatch)
    seen = {}
    real = bench.run_bench

    def fake_run_bench(**kw):  # the CPU measures a tiny cell; the report carries what CUDA would have said
        seen.update(kw)
        report = real(cells=["rnn"], shapes=[(2, 1, 4)], repeats=1, overhead_steps=2)
        report["settings"]["device"] = bench.device_metadata(kw["device"])
        return report

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    out = tmp_path / "gpu.json"
    assert main(["bench", "--device", "cuda", "--cells", "rnn", "--shapes", "2,1,4", "--repeats", "1",
                 "--out", str(out)]) == 0
    assert seen["device"] == "cuda"
    meta = json.loads(out.read_text())["settings"]["device"]
    assert meta["type"] == "cuda" and meta["gpu"] == "NVIDIA H100 80GB HBM3" and meta["capability"] == "9.0"
    assert meta["driver"] == "550.54.15" and meta["cuda_runtime"] == "12.4" and meta["cudnn"] == 91002
    assert meta["triton"] == triton.__version__ and meta["torch"]
    assert "NVIDIA H100 80GB HBM3, driver 550.54.15" in capsys.readouterr().out


def test_autocast_rows_run_everything_under_autocast_and_report_the_ratio(monkeypatch):
    import torch

    from rnnlab.bench import run_bench

    seen = []
    real = torch.autocast.__init__

    def spy(self, device_type, dtype=None, *args, **kwargs):
        seen.append(dtype)
        real(self, device_type, dtype, *args, **kwargs)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    report = run_bench(cells=["lstm", "lstm:autocast=bf16"], shapes=[(5, 2, 8)], repeats=1, overhead_steps=3)
    assert torch.bfloat16 in seen and report["summary"]["lstm:autocast=bf16"]["train_vs_plain"] > 0
    with pytest.raises(ValueError, match="autocast"):
        run_bench(cells=["lstm:autocast=int4"], shapes=[(5, 2, 8)], repeats=1, overhead_steps=3)


@pytest.mark.parametrize("spec, expected", [("lstm:autocast=bf16", "aten"), ("gru:autocast=bf16", "aten"),
                                            ("lstm:autocast=fp16", "cpp"), ("peephole:autocast=bf16", "cpp:bf16"),
                                            ("sru:autocast=bf16", "cpp"), ("lstm", "cpp"),
                                            ("gru:autocast=bf16,backend=cpp", "cpp:bf16")])
def test_autocast_rows_name_the_route_that_ran(spec, expected, monkeypatch):
    """bf16 CPU autocast sends a plain stack to torch.nn's op ("aten"); fp16 and other cells keep the driver,
    with its products in bf16 under bf16 autocast where the CPU has native bf16 GEMMs ("cpp:bf16"; SRU forms no
    product)."""
    import torch

    from rnnlab.backends.cpp import generic_ops
    from rnnlab.bench import _ours, backend_used

    monkeypatch.setattr(generic_ops, "native_bf16", lambda: True)  # the label, whatever this CPU has
    mod = _ours(spec, 8, "auto", "cpu")
    assert backend_used(mod, torch.randn(5, 2, 8)) == expected
    monkeypatch.setattr(generic_ops, "native_bf16", lambda: False)
    assert backend_used(mod, torch.randn(5, 2, 8)) == expected.replace(":bf16", "")


def test_a_spec_may_choose_the_backend_but_the_eager_peer_stays_reference():
    from rnnlab.bench import _ours

    assert _ours("gru:backend=cpp", 8, "auto", "cpu").backend == "cpp"
    assert _ours("gru:backend=cpp", 8, "reference", "cpu").backend == "reference"
    assert _ours("gru", 8, "auto", "cpu").backend == "auto"
