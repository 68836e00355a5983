"""`rnnlab export` -> `rnnlab eval --onnx` / `generate --onnx`: the deployed model gives the checkpoint's metric."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="onnx is a test extra: pip install -e '.[test]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is a test extra: pip install -e '.[test]'")

from rnnlab.cli import main  # noqa: E402

CUE = ["cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "96", "-o", "n_val=48", "-o", "n_test=48",
       "--cell", "peephole", "--hidden-size", "8", "--embedding-dim", "4", "--batch-size", "16", "--lr", "0.02",
       "--epochs", "2", "--threads", "1", "--quiet"]
CHARLM = ["charlm", "--works", "sonnets", "--max-chars", "3000", "--cell", "mingru", "--hidden-size", "8",
          "--embedding-dim", "4", "--batch-size", "8", "--bptt", "20", "--max-steps", "5", "--threads", "1",
          "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, argv in (("cue", CUE), ("charlm", CHARLM)):
        assert main(["train", *argv, "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


def _json(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _err(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("task", ["cue", "charlm"])
def test_export_then_eval_gives_the_checkpoint_metric(runs, tmp_path, capsys, task):
    """cue: a class task on a native LSTM node; charlm: streamed (carried state) evaluation of a Scan cell."""
    out = tmp_path / "model.onnx"
    assert main(["export", str(runs[task]), "--format", "onnx", "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["task"]["name"] == task and meta["layers"] == (["LSTM"] if task == "cue" else ["Scan"])
    if task == "charlm":
        assert len(meta["vocabulary"]) == meta["model_io"]["vocab_size"]
    torch_metrics = _json(capsys, ["eval", str(runs[task]), "--json"])["metrics"]
    onnx_metrics = _json(capsys, ["eval", "--onnx", str(out), "--json"])["metrics"]
    assert onnx_metrics.keys() == torch_metrics.keys()
    for k, v in torch_metrics.items():
        assert onnx_metrics[k] == pytest.approx(v, abs=1e-5), k
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_generate_onnx_writes_the_same_text(runs, tmp_path, capsys):
    out = tmp_path / "lm.onnx"
    assert main(["export", str(runs["charlm"]), "--out", str(out)]) == 0
    capsys.readouterr()
    argv = ["--prime", "Love", "--length", "40", "--seed", "3", "--temperature", "0.8"]
    assert main(["generate", str(runs["charlm"]), *argv]) == 0
    expected = capsys.readouterr().out
    assert main(["generate", "--onnx", str(out), *argv]) == 0
    assert capsys.readouterr().out == expected
    assert "needs a charlm export" in _err(capsys, ["generate", "--onnx", str(_export_cue(runs, tmp_path))])


def _export_cue(runs, tmp_path):
    out = tmp_path / "cue.onnx"
    if not out.exists():
        assert main(["export", str(runs["cue"]), "--out", str(out)]) == 0
    return out


def test_int8_quantized_export_runs_close_to_fp32(runs, tmp_path, capsys):
    fp32 = _export_cue(runs, tmp_path)
    int8 = tmp_path / "cue8.onnx"
    assert main(["export", str(runs["cue"]), "--quantize", "int8", "--out", str(int8)]) == 0
    assert json.loads((tmp_path / "cue8.onnx.json").read_text())["quantize"] == "int8"
    ops = {n.op_type for n in __import__("onnx").load(str(int8)).graph.node}
    assert ops & {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeLinear"}, ops
    a = _json(capsys, ["eval", "--onnx", str(fp32), "--json"])["metrics"]
    b = _json(capsys, ["eval", "--onnx", str(int8), "--json"])["metrics"]
    assert b["loss"] == pytest.approx(a["loss"], abs=0.05)


def test_pt2_export_loads_and_matches(runs, tmp_path):
    from rnnlab.train.checkpoint import load_model

    out = tmp_path / "cue.pt2"
    assert main(["export", str(runs["cue"]), "--format", "pt2", "--out", str(out)]) == 0
    program = torch.export.load(str(out)).module()
    model, _ = load_model(runs["cue"])
    for T in (3, 8):
        x = torch.randint(0, model.vocab_size, (2, T))
        lengths = torch.tensor([T, 2])
        state = tuple(torch.zeros(s) for s in model.rnn.state_shapes(2))
        with torch.no_grad():
            ref, _ = model(x, lengths)
            got = program(x, lengths, *state)
        torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=0)


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    cue = str(runs["cue"])
    assert "--format: expected one of onnx, pt2, got 'tflite'" in _err(
        capsys, ["export", cue, "--format", "tflite", "--out", str(tmp_path / "m")])
    assert "--quantize: expected one of int8" in _err(
        capsys, ["export", cue, "--quantize", "int4", "--out", str(tmp_path / "m.onnx")])
    assert "--quantize: int8 quantization applies to --format onnx" in _err(
        capsys, ["export", cue, "--format", "pt2", "--quantize", "int8", "--out", str(tmp_path / "m.pt2")])
    assert "does not exist" in _err(capsys, ["export", cue, "--out", str(tmp_path / "no" / "m.onnx")])
    assert "is a directory" in _err(capsys, ["export", cue, "--out", str(tmp_path)])
    assert "no such file" in _err(capsys, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()
    # a checkpoint whose weights fail their checksum
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(runs["cue"], bad)
    weights = sorted(bad.glob("checkpoints/step-*/model.safetensors"))
    for w in weights:
        data = bytearray(w.read_bytes())
        data[-1] ^= 0xFF
        w.write_bytes(bytes(data))
    assert "checksum" in _err(capsys, ["export", str(bad), "--out", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()
    # eval --onnx on a missing file, on a model without its metadata
    assert "missing metadata" in _err(capsys, ["eval", "--onnx", str(tmp_path / "none.onnx")])
    model = _export_cue(runs, tmp_path)
    (tmp_path / "cue.onnx.json").unlink()
    assert "missing metadata" in _err(capsys, ["eval", "--onnx", str(model)])
    (tmp_path / "x.onnx").write_text("not a model")
    (tmp_path / "x.onnx.json").write_text(json.dumps({"format": "rnnlab-export"}))
    assert "cannot load the ONNX model" in _err(capsys, ["eval", "--onnx", str(tmp_path / "x.onnx")])


def test_metadata_carries_the_input_and_target_normalisation():
    """A deployed forecaster must scale raw features as in training: the export metadata has the statistics."""
    from rnnlab.export.files import task_metadata
    from rnnlab.tasks import make_task

    meta = task_metadata({"task": {"name": "weather", "options": {}}})
    task = make_task("weather")
    norm = meta["normalisation"]
    assert norm["input_mean"] == pytest.approx(task.input_mean.tolist())
    assert norm["input_std"] == pytest.approx(task.input_std.tolist()) and len(norm["input_std"]) == 4
    assert "target_mean" in norm and meta["feature_names"] == list(task.feature_names)
    vowels = task_metadata({"task": {"name": "vowels", "options": {}}})
    assert len(vowels["normalisation"]["input_mean"]) == 12
