"""Hostile run directories: manifest names never reach outside the run, and a checkpoint never names a file to read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rnnlab.cli import main
from rnnlab.train import Checkpointing, TrainConfig, Trainer
from rnnlab.train.checkpoint import (MANIFEST, CheckpointError, clean_stale_files, config_digest, load_checkpoint,
                                     read_manifest, remove_checkpoint)
from toy_tasks import SignTask
from test_trainer import sign_model
from cli_helpers import one_line_error  # noqa: E402

TINY = ["cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "32", "-o", "n_val=16", "-o", "n_test=16",
        "--cell", "gru", "--hidden-size", "4", "--embedding-dim", "4", "--batch-size", "16", "--epochs", "2",
        "--threads", "1", "--quiet"]
#: a text long enough for charlm's default windows (val and test need 129 characters each)
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(80))
SECRET = "TOPSECRET-do-not-leak-4711"

#: manifest values that must never be followed (each with the manifest field it goes into)
BAD_NAMES = ["../../victim", "/tmp/victim-abs", "step-00000002/../../victim", ".", "..", "", "step-2",
             "step-00000002/x", "victim", "~/victim", "step-00000002\x00"]
BAD_TYPES = [5, 1.5, ["step-00000002"], {"a": 1}, True]


_err = one_line_error


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One tiny finished `rnnlab train` run (4 steps, checkpoints step-2 and step-4); copy it before editing."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(cli_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(cli_run, dst)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return dst, victim


def _edit_manifest(run_dir, **changes):
    path = run_dir / "checkpoints" / MANIFEST
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- manifest names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", BAD_NAMES + BAD_TYPES, ids=repr)
@pytest.mark.parametrize("field", ["checkpoints", "latest", "best"])
def test_bad_manifest_name_is_rejected_by_the_library(run, field, value):
    run_dir, victim = run
    if field == "checkpoints":
        value = [value, *read_manifest(run_dir)["checkpoints"]]
    _edit_manifest(run_dir, **{field: value})
    with pytest.raises(CheckpointError, match=rf"{field}(\[0\])?.*refusing") as e:
        read_manifest(run_dir)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(CheckpointError):
        load_checkpoint(run_dir, "best")
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("value", ["../../victim", "VICTIM_ABS", "..", 7], ids=repr)
def test_resume_never_deletes_outside_the_run(run, capsys, value):
    """`rnnlab train --resume` with a poisoned checkpoints list: exit 2, one line, nothing deleted."""
    run_dir, victim = run
    if value == "VICTIM_ABS":
        value = str(victim)
    elif value == "../../victim":
        value = os.path.relpath(victim, run_dir / "checkpoints")
    names = read_manifest(run_dir)["checkpoints"]
    _edit_manifest(run_dir, checkpoints=[value, *names])
    err = _err(capsys, ["train", "--resume", "--out", str(run_dir), "--epochs", "4", "--quiet"])
    assert "checkpoints[0]" in err and repr(value) in err
    assert (victim / "precious.txt").read_text() == "keep me"
    for name in names:  # the run itself is untouched too
        assert (run_dir / "checkpoints" / name / "model.safetensors").exists()


@pytest.mark.parametrize("field", ["best", "latest"])
@pytest.mark.parametrize("command", ["eval", "inspect", "generate"])
def test_best_or_latest_outside_the_run_is_refused(run, capsys, tmp_path, field, command):
    run_dir, _ = run
    # a complete, valid checkpoint outside the run: following the name would load it
    outside = tmp_path / "elsewhere"
    shutil.copytree(run_dir / "checkpoints" / read_manifest(run_dir)["latest"], outside)
    _edit_manifest(run_dir, **{field: os.path.relpath(outside, run_dir / "checkpoints")})
    argv = {"eval": ["eval", str(run_dir)], "generate": ["generate", str(run_dir)],
            "inspect": ["inspect", str(run_dir), "--out", str(tmp_path / "page"), "--no-reference",
                        "--which", field]}[command]
    err = _err(capsys, argv)
    assert field in err and "elsewhere" in err and "refusing" in err


def test_symlinked_checkpoint_is_neither_loaded_nor_followed_for_deletion(tmp_path):
    """A manifest child that is a symlink to a folder outside: loading refuses it, rotation only unlinks it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    run_dir = tmp_path / "run"
    cfg = TrainConfig(epochs=1, batch_size=32, keep_checkpoints=1)
    Trainer(sign_model(), SignTask(n=64), cfg, hooks=[Checkpointing()], run_dir=run_dir).fit()
    ckdir = run_dir / "checkpoints"
    os.symlink(victim, ckdir / "step-00000000")  # the oldest name, first to be rotated out
    _edit_manifest(run_dir, checkpoints=["step-00000000", *read_manifest(run_dir)["checkpoints"]])
    _edit_manifest(run_dir, latest="step-00000000")
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(run_dir, "latest")
    _edit_manifest(run_dir, latest="step-00000002")
    # a longer run rotates: the symlink goes, what it pointed to stays
    more = Trainer(sign_model(), SignTask(n=64), TrainConfig(epochs=3, batch_size=32, keep_checkpoints=1),
                   hooks=[Checkpointing()], run_dir=run_dir)
    more.resume()
    more.fit()
    assert not os.path.lexists(ckdir / "step-00000000")
    assert (victim / "precious.txt").read_text() == "keep me"
    # direct use of the deletion helper: names are checked, links unlinked only
    os.symlink(victim, ckdir / "step-00000099")
    remove_checkpoint(run_dir, "step-00000099")
    assert (victim / "precious.txt").exists()
    for bad in ("../victim", str(victim)):
        with pytest.raises(CheckpointError):
            remove_checkpoint(run_dir, bad)
    assert (victim / "precious.txt").exists()


def test_stale_file_cleanup_stays_inside(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    os.symlink(victim, ckdir / ".step-00000003.tmp-abc123")  # matches the pattern, but is a link
    assert clean_stale_files(tmp_path / "run") == [".step-00000003.tmp-abc123"]
    assert (victim / "precious.txt").exists() and not os.path.lexists(ckdir / ".step-00000003.tmp-abc123")
    # a checkpoints/ that is itself a symlink is not touched at all
    other = tmp_path / "run2"
    other.mkdir()
    (victim / ".step-00000001.tmp-zz").mkdir()
    os.symlink(victim, other / "checkpoints")
    assert clean_stale_files(other) == []
    assert (victim / ".step-00000001.tmp-zz").exists()


# --- config.json is covered by the checksums ---------------------------------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda c: c["task"]["options"].update(path="/etc/passwd"),
    lambda c: c["task"].update(name="charlm"),
    lambda c: c["train"].update(lr=0.5),
    lambda c: c["model"].update(hidden_size=5),
    lambda c: c.update(step=999),
    lambda c: c["sha256"].update({"model.safetensors": "abc"}),
    lambda c: c.update(sha256="abc"),
    lambda c: c.pop("config_sha256"),
    lambda c: c.update(extra_field=1),
], ids=["task.path", "task.name", "train.lr", "model.hidden_size", "step", "sha256.model", "sha256-str",
        "no-seal", "new-field"])
def test_any_config_edit_is_detected(run, capsys, edit):
    run_dir, _ = run
    for name in read_manifest(run_dir)["checkpoints"]:
        path = run_dir / "checkpoints" / name / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config, indent=1))
    with pytest.raises(CheckpointError, match="checksum mismatch|sha256"):
        load_checkpoint(run_dir)
    assert "checksum mismatch" in _err(capsys, ["eval", str(run_dir)])


def test_digest_is_stable_across_a_json_round_trip():
    config = {"b": 1.1, "a": {2: [1, 2.5e-300], "x": None}, "s": "é"}
    assert config_digest(config) == config_digest(json.loads(json.dumps(config)))
    assert config_digest(config) != config_digest({**config, "b": 1.2})


# --- a checkpoint does not decide which local files are read --------------------------------------------------------
def _forge(run_dir, **options):
    """What an attacker who knows the format does: edit config.json and recompute its seal."""
    for name in read_manifest(run_dir)["checkpoints"]:
        path = run_dir / "checkpoints" / name / "config.json"
        config = json.loads(path.read_text())
        config["task"]["options"].update(options)
        config["config_sha256"] = config_digest(config)
        path.write_text(json.dumps(config, indent=1))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny charlm run on a user text file (3 steps)."""
    root = tmp_path_factory.mktemp("charlm")
    text = root / "corpus.txt"
    text.write_text(TEXT)
    out = root / "run"
    assert main(["train", "charlm", "--text", str(text), "--hidden-size", "4", "--embedding-dim", "4",
                 "--batch-size", "4", "--bptt", "16", "--max-steps", "3", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    return out, text


@pytest.fixture
def charlm_run(text_run, tmp_path):
    out, text = text_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    secret = tmp_path / "secret.txt"
    secret.write_text(TEXT.replace("fox", SECRET))  # long enough to be a corpus, if it were ever read
    return dst, text, secret


def test_data_hash_is_recorded(charlm_run):
    run_dir, text, _ = charlm_run
    import hashlib

    task = load_checkpoint(run_dir).config["task"]
    assert task["data_sha256"] == {"path": hashlib.sha256(text.read_bytes()).hexdigest()}


def test_text_model_needs_the_user_to_name_its_file(charlm_run, capsys, tmp_path):
    run_dir, text, secret = charlm_run
    for argv in (["eval", str(run_dir)], ["generate", str(run_dir), "--length", "5"],
                 ["inspect", str(run_dir), "--out", str(tmp_path / "p"), "--no-reference"]):
        err = _err(capsys, argv)
        assert "--data FILE" in err and "corpus.txt" in err
    assert main(["eval", str(run_dir), "--data", str(text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["bpc"] > 0
    assert main(["generate", str(run_dir), "--data", str(text), "--length", "5"]) == 0
    capsys.readouterr()
    err = _err(capsys, ["eval", str(run_dir), "--data", str(secret)])
    assert "different or edited file" in err and SECRET not in err


@pytest.mark.parametrize("target", ["/etc/passwd", "SECRET"])
def test_forged_path_is_never_opened(charlm_run, capsys, tmp_path, target):
    """task.options.path rewritten (seal recomputed): nothing reads it, nothing shows its text."""
    run_dir, text, secret = charlm_run
    path = str(secret) if target == "SECRET" else target
    _forge(run_dir, path=path)
    page = tmp_path / "page"
    outputs = []
    for argv in (["eval", str(run_dir)], ["generate", str(run_dir)],
                 ["inspect", str(run_dir), "--out", str(page), "--no-reference"]):
        outputs.append(_err(capsys, argv))
    # with the right file named by the user, inspect works and shows only that file's text
    assert main(["inspect", str(run_dir), "--out", str(page), "--no-reference", "--data", str(text),
                 "--length", "40"]) == 0
    outputs.append(capsys.readouterr().out)
    html = (page / "index.html").read_text(encoding="utf-8")
    passwd = open("/etc/passwd", encoding="utf-8", errors="replace").read().splitlines()[0] \
        if os.path.exists("/etc/passwd") else SECRET
    for text_out in [*outputs, html]:
        assert SECRET not in text_out and passwd not in text_out and "/etc/passwd" not in text_out
    # --resume also needs the file named again
    assert "--text FILE" in _err(capsys, ["train", "--resume", "--out", str(run_dir), "--max-steps", "4"])


def test_forged_path_to_a_fifo_does_not_block(charlm_run, tmp_path):
    """Opening a FIFO blocks forever: if eval or inspect opened the forged path, this would time out."""
    run_dir, _, _ = charlm_run
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _forge(run_dir, path=str(fifo))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["eval", str(run_dir)], ["inspect", str(run_dir), "--out", str(tmp_path / "p"), "--no-reference"]):
        r = subprocess.run([sys.executable, "-m", "rnnlab.cli", *argv], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "--data FILE" in r.stderr, r.stderr


def test_resume_with_the_named_text_file(charlm_run, capsys):
    run_dir, text, secret = charlm_run
    assert "different or edited" in _err(capsys, ["train", "--resume", "--out", str(run_dir), "--text", str(secret),
                                                  "--max-steps", "4"])
    assert main(["train", "--resume", "--out", str(run_dir), "--text", str(text), "--max-steps", "4"]) == 0
    config = load_checkpoint(run_dir, "latest").config
    assert config["step"] == 4 and config["task"]["options"]["path"] == str(text)


def test_packaged_corpus_model_refuses_data(run, capsys, tmp_path):
    run_dir, _ = run
    f = tmp_path / "x.txt"
    f.write_text(TEXT)
    assert "leave --data out" in _err(capsys, ["eval", str(run_dir), "--data", str(f)])


def test_manifest_checkpoints_must_be_a_list(run):
    run_dir, _ = run
    _edit_manifest(run_dir, checkpoints="step-00000002")
    with pytest.raises(CheckpointError, match="checkpoints must be a list"):
        read_manifest(run_dir)


def test_tag_never_opens_the_checkpoints_text_path(tmp_path, capsys):
    """`rnnlab tag` on a punctuation model trained on a text file: --data required, forged path never read."""
    text = tmp_path / "words.txt"
    text.write_text("".join(f"Once, upon a time there were {i} cats. They sat; then they ran!\n" for i in range(60)))
    run_dir = tmp_path / "run"
    assert main(["train", "punctuation", "--text", str(text), "--cell", "gru", "--hidden-size", "4",
                 "--embedding-dim", "4", "--max-steps", "2", "--batch-size", "8", "--threads", "1", "-q",
                 "--out", str(run_dir)]) == 0
    capsys.readouterr()
    assert "--data FILE" in _err(capsys, ["tag", str(run_dir), "once upon a time"])
    assert main(["tag", str(run_dir), "once upon a time", "--data", str(text)]) == 0
    capsys.readouterr()
    secret = tmp_path / "secret.txt"
    secret.write_text(text.read_text().replace("cats", SECRET))
    _forge(run_dir, path=str(secret))
    err = _err(capsys, ["tag", str(run_dir), "once upon a time"])
    assert SECRET not in err and "--data FILE" in err


def test_export_metadata_never_opens_the_checkpoints_path(charlm_run):
    """`rnnlab export` copies the task's vocabulary into FILE.json: never from a file the checkpoint names."""
    from rnnlab.export.files import task_metadata

    run_dir, _, secret = charlm_run
    secret.write_text(TEXT + "§¤" * 50)  # characters the training text does not have
    _forge(run_dir, path=str(secret))
    meta = task_metadata(load_checkpoint(run_dir).config)
    assert "§" not in meta.get("vocabulary", [])
