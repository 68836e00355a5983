"""Nothing lost: kills during the first checkpoint, leftovers of killed writes, NaN metrics, demo --out, --out ""."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rnnlab.cli import UserError, main
from rnnlab.commands.demo import MARKER, claim_out_dir
from rnnlab.train import Checkpointing, MetricsLog, TrainConfig, Trainer, TrainingDiverged, load_checkpoint
from rnnlab.train.checkpoint import MANIFEST, clean_stale_files, read_manifest, save_checkpoint, strict_json
from toy_tasks import SignTask
from test_trainer import sign_model
from cli_helpers import one_line_error

TINY = ["cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "32", "-o", "n_val=16", "-o", "n_test=16",
        "--cell", "gru", "--hidden-size", "4", "--embedding-dim", "4", "--batch-size", "16", "--epochs", "2",
        "--threads", "1", "--quiet"]

#: runs `rnnlab ARGV` but blocks forever at one point of the first checkpoint write, after touching FLAG
KILL_SCRIPT = r"""
import os, sys, time
import rnnlab.train.checkpoint as ck
where, flag, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def block():
    open(flag, "w").close()
    time.sleep(600)

if where == "checkpoint":  # every file of .step-N.tmp-XXXX written, before it is renamed into place
    real_fsync_dir = ck._fsync_dir
    def fsync_dir(path):
        if ".tmp-" in os.path.basename(str(path)):
            block()
        return real_fsync_dir(path)
    ck._fsync_dir = fsync_dir
else:  # step-N renamed into place, the manifest's temporary file written but not yet renamed
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if os.path.basename(str(src)).startswith(".MANIFEST.json."):
            block()
        return real_replace(src, dst, *a, **k)
    os.replace = replace
from rnnlab.cli import main
sys.exit(main(argv))
"""


_err = one_line_error


def _leftovers(run_dir):
    ckdir = run_dir / "checkpoints"
    return sorted(n for n in os.listdir(ckdir) if n.startswith(".")) if ckdir.is_dir() else []


def _kill_during_first_checkpoint(run_dir, where):
    flag = run_dir.parent / f"{run_dir.name}.blocked"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, where, str(flag), "train", *TINY,
                             "--out", str(run_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the first checkpoint write was never reached"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("where", ["checkpoint", "manifest"])
def test_sigkill_during_first_checkpoint_is_restartable(tmp_path, capsys, reference, where):
    killed = tmp_path / "killed"
    _kill_during_first_checkpoint(killed, where)
    assert not (killed / "checkpoints" / MANIFEST).exists()
    left = _leftovers(killed)
    pattern = ".step-00000002.tmp-" if where == "checkpoint" else ".MANIFEST.json."
    assert len(left) == 1 and left[0].startswith(pattern), left

    # --resume alone: nothing to continue; one line saying exactly what to do
    err = _err(capsys, ["train", "--resume", "--out", str(killed)])
    assert "no completed checkpoint yet" in err and f"--out {killed}" in err

    # --resume with the run's settings starts it from scratch; a plain train does the same
    for argv in (["train", "--resume", *TINY], ["train", *TINY]):
        run_dir = tmp_path / f"again-{len(argv)}"
        shutil.copytree(killed, run_dir)
        assert main([*argv, "--out", str(run_dir)]) == 0
        cap = capsys.readouterr()
        assert ("starting the run from scratch" in cap.err) == ("--resume" in argv)
        assert _leftovers(run_dir) == []  # the killed write's temporary files are gone
        assert json.loads((run_dir / "results.json").read_text())["test"] == reference["test"]
        assert read_manifest(run_dir)["latest"] == "step-00000004"


def test_nonfinite_option_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    args = [a if a != "gru" else "lstm" for a in TINY]
    err = _err(capsys, ["train", *args, "--cell-option", "forget_bias=1e400", "--out", str(out)])
    assert "forget_bias" in err
    assert not (out / "checkpoints").exists()
    config = tmp_path / "c.json"
    config.write_text('{"model": {"cell": "lstm", "cell_options": {"forget_bias": Infinity}}}')
    assert "forget_bias" in _err(capsys, ["train", *args, "--config", str(config), "--out", str(out)])
    assert not (out / "checkpoints").exists()


def test_trainer_refuses_an_unsavable_config_before_training(tmp_path):
    model = sign_model()
    model.config.cell_options = {"forget_bias": math.inf}  # e.g. set by library code after validation
    with pytest.raises(ValueError, match=r"model\.cell_options\.forget_bias: expected a finite number, got inf"):
        Trainer(model, SignTask(n=32), TrainConfig(epochs=1, batch_size=32), hooks=[Checkpointing()],
                run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_strict_json_never_half_writes(tmp_path):
    with pytest.raises(ValueError, match=r"a\.b\[1\]: expected a finite number, got nan"):
        strict_json({"a": {"b": [1.0, math.nan]}})
    model = sign_model()
    with pytest.raises(ValueError, match="metrics.val.loss"):
        save_checkpoint(tmp_path / "step-00000001", model, {"metrics": {"val": {"loss": math.inf}}})
    assert os.listdir(tmp_path) == []  # no final directory, no temporary one


class NaNValTask(SignTask):
    """SignTask whose validation turns NaN (``what``: the metric or only the loss) from its ``bad_from``-th eval."""

    def __init__(self, bad_from: int, what: str = "accuracy", **kw):
        super().__init__(**kw)
        self.bad_from, self.what, self.evals = bad_from, what, 0

    def metrics(self, output, batch):
        m = super().metrics(output, batch)
        if self.evals >= self.bad_from and self.what == "accuracy":
            m["accuracy"] = math.nan
        if self.evals >= self.bad_from and self.what == "loss":
            m["loss"] = math.inf
        return m

    def batches(self, split, batch_size, **kw):
        if split == "val":
            self.evals += 1
        return super().batches(split, batch_size, **kw)


@pytest.mark.parametrize("what", ["accuracy", "loss"])
def test_nan_validation_metric_stops_like_a_nan_loss(tmp_path, what):
    task = NaNValTask(bad_from=3, what=what, n=64)  # 2 steps per epoch: evals at steps 2, 4, then NaN at 6
    cfg = TrainConfig(epochs=6, batch_size=32)
    trainer = Trainer(sign_model(), task, cfg, hooks=[Checkpointing(), MetricsLog(tmp_path)], run_dir=tmp_path)
    with pytest.raises(TrainingDiverged, match=rf"step 6 .*validation {what} is (nan|inf).*last good checkpoint"):
        trainer.fit()
    assert load_checkpoint(tmp_path, "latest").config["step"] == 4
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():  # strict JSON throughout
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))


def test_stale_files_of_killed_writes_are_cleaned(tmp_path):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    model = sign_model()
    for step in (4, 5):
        save_checkpoint(ckdir / f"step-0000000{step}", model, {"step": step})
    (ckdir / ".step-00000006.tmp-ab_c12").mkdir()  # an unfinished checkpoint
    (ckdir / ".step-00000006.tmp-ab_c12" / "model.safetensors").write_bytes(b"torn")
    (ckdir / ".MANIFEST.json.k2j3x9").write_text("{")  # an unfinished manifest
    shutil.copytree(ckdir / "step-00000004", ckdir / ".step-00000004.old-123")  # replaced; new copy in place
    os.rename(ckdir / "step-00000005", ckdir / ".step-00000005.old-77")  # killed between the two renames
    keep = [".MANIFEST.json", "notes.txt", ".step-x.tmp-1", "step-00000004.tmp-1", ".MANIFEST.json.",
            ".step-00000007.old-12a"]
    for name in keep:
        (ckdir / name).write_text("not ours to delete")
    handled = clean_stale_files(tmp_path)
    assert sorted(handled) == [".MANIFEST.json.k2j3x9", ".step-00000004.old-123", ".step-00000005.old-77",
                               ".step-00000006.tmp-ab_c12"]
    assert sorted(os.listdir(ckdir)) == sorted(keep + ["step-00000004", "step-00000005"])
    assert load_checkpoint(ckdir / "step-00000005").config["step"] == 5  # the only copy was put back


def test_demo_never_deletes_what_it_did_not_create(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "charlm").mkdir(parents=True)
    (out / "charlm" / "planted.txt").write_text("precious")
    err = _err(capsys, ["demo", "--out", str(out), "--skip-lm"])
    assert "--force" in err and MARKER in err
    assert (out / "charlm" / "planted.txt").read_text() == "precious"
    assert not (out / MARKER).exists()
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _err(capsys, ["demo", "--out", str(tmp_path / "file")])
    # an empty or new folder, an earlier demo's output, or --force: the demo claims it with its marker
    for path, force in ((tmp_path / "new", False), (out, True)):
        claim_out_dir(str(path), force)
        assert (path / MARKER).is_file()
    claim_out_dir(str(out), False)  # marked now: a rerun is allowed
    assert (out / "charlm" / "planted.txt").exists()  # claiming deletes nothing
    with pytest.raises(UserError):
        claim_out_dir(str(tmp_path), False)


def _commands_with_out() -> list[list[str]]:
    """``[command, placeholder positionals...]`` for every registered command that has an --out option."""
    from rnnlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, parser in sub.choices.items():
        if any("--out" in a.option_strings for a in parser._actions):
            positionals = [a for a in parser._actions if not a.option_strings and a.nargs not in ("?", "*")]
            out.append([name, *(["x"] * len(positionals))])
    return out


@pytest.mark.parametrize("argv", _commands_with_out(), ids=lambda a: a[0])
def test_empty_out_is_refused(capsys, argv):
    assert "--out" in _err(capsys, [*argv, "--out", ""])


def test_every_command_with_out_is_covered():
    assert {"train", "compare", "demo", "inspect", "bench"} <= {a[0] for a in _commands_with_out()}


def test_results_json_is_strict():
    from rnnlab.train.runner import _finite_or_none

    assert _finite_or_none({"a": [math.nan, 1.0], "b": {"c": math.inf}, "d": "x"}) == \
        {"a": [None, 1.0], "b": {"c": None}, "d": "x"}
