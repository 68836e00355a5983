"""CLI: train -> eval -> resume (also after SIGKILL), generate, compare, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnlab.cli import main
from rnnlab.train import load_model
from rnnlab.train.checkpoint import read_manifest

TINY = ["cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "96", "-o", "n_val=48", "-o", "n_test=48",
        "--cell", "gru", "--hidden-size", "8", "--embedding-dim", "4", "--batch-size", "16", "--lr", "0.02",
        "--threads", "1", "--quiet"]


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize("argv,message", [
    (["train", "nosuchtask"], "unknown 'nosuchtask'"),
    (["train", "cue", "--cell", "nosuchcell"], "--cell: unknown cell 'nosuchcell'"),
    (["train", "cue", "--lr", "-1"], "--lr: expected a value in"),
    (["train", "cue", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    (["train", "cue", "--dropout", "1.5"], "--dropout: expected a probability"),
    (["train", "cue", "-o", "nokey"], "--option: expected KEY=VALUE"),
    (["train", "cue", "-o", "colour=red"], "colour"),
    (["train", "cue", "--resume"], "--resume: needs --out"),
    (["eval", "/nonexistent/run"], "no such file or directory"),
    (["generate", "/nonexistent/run"], "no such file or directory"),
])
def test_errors_are_one_line(capsys, argv, message):
    assert message in _err(capsys, argv)


def test_config_file_errors(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert "not valid JSON" in _err(capsys, ["train", "--config", str(bad)])
    bad.write_text(json.dumps({"train": {"epochs": -2}}))
    assert "--epochs: expected an integer >= 1" in _err(capsys, ["train", "cue", "--config", str(bad)])
    assert "no such file" in _err(capsys, ["train", "cue", "--config", str(tmp_path / "missing.json")])


def test_text_file_errors(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    for path in (empty, binary):
        err = _err(capsys, ["train", "charlm", "--text", str(path), "--out", str(tmp_path / "r")])
        assert str(path) in err


def test_train_eval_resume_generate_errors(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--n-train", "192", "--hidden-size", "16", "--epochs", "3", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "test accuracy" in stdout and "beats it" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["steps"] == 36 and res["test"]["accuracy"] > res["baseline"]["accuracy"]
    assert main(["eval", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["metrics"]["accuracy"] == pytest.approx(res["test"]["accuracy"])
    # the same run directory again without --resume is refused
    assert "already holds a run" in _err(capsys, ["train", *TINY, "--out", str(out)])
    # --resume with more epochs continues from step 12
    assert main(["train", "--resume", "--out", str(out), "--epochs", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["steps"] == 48
    assert "needs a charlm or wordlm model" in _err(capsys, ["generate", str(out)])
    # corrupt the weights: eval fails with one line
    latest = out / "checkpoints" / read_manifest(out)["best"] / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:-7])
    assert "checksum mismatch" in _err(capsys, ["eval", str(out)])


def _cli(*argv):
    return [sys.executable, "-m", "rnnlab.cli", *argv]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    args = [*TINY, "--epochs", "12", "--checkpoint-every", "3", "--recurrent-dropout", "0.1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cli("train", *args, "--out", str(ref)), check=True, env=env, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            m = read_manifest(run) if (run / "checkpoints" / "MANIFEST.json").exists() else {}
            if m.get("latest", "step-0") >= "step-00000020":
                break
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    step = int(read_manifest(run)["latest"].split("-")[1])
    assert 20 <= step < 72
    r = subprocess.run(_cli("train", "--resume", "--out", str(run), "--quiet"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, _ = load_model(ref, "latest")
    b, cfg = load_model(run, "latest")
    assert cfg["step"] == 72
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=1e-6)
    assert json.loads((run / "results.json").read_text())["test"] == json.loads((ref / "results.json").read_text())["test"]


def test_help_lists_every_option(capsys):
    for cmd in ("train", "eval", "generate", "compare", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "--bptt" in capsys.readouterr().out


def test_compare_writes_table_and_plot(capsys, tmp_path):
    code = main(["compare", "--cells", "rnn,gru", "--lags", "1,3", "--epochs", "1", "--n-train", "32",
                 "--hidden-size", "4", "--embedding-dim", "4", "-o", "n_val=16", "-o", "n_test=16", "--jobs", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "results.md").read_text()
    assert "| rnn |" in table and "| gru |" in table and "lag 3" in table
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 4
