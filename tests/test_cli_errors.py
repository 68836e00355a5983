"""Every class of CLI failure from issue 10 ends in one stderr line: exit 2 for user mistakes, 1 for resources."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from rnnlab.cli import main
from rnnlab.train import checkpoint
from cli_helpers import tiny_charlm_run  # noqa: E402

#: a cue run that trains in about a second; the reference backend needs no C++ build
TINY = ["cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "32", "-o", "n_val=16", "-o", "n_test=16",
        "--cell", "gru", "--hidden-size", "8", "--embedding-dim", "4", "--batch-size", "16", "--epochs", "1",
        "--backend", "reference", "--threads", "1", "--quiet"]
#: a few hundred words of text for a char-LM run of two steps
TEXT = " ".join(["the quick brown fox jumps over a lazy dog and then runs far away"] * 40)


def one_line(capsys, argv, code=2):
    """Run the CLI in-process; assert the exit code and exactly one non-empty stderr line, return that line."""
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert got == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def cue_run(tmp_path_factory):
    """One finished tiny cue run; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("cue") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    """One tiny char-LM run on a small text file (two steps)."""
    return tiny_charlm_run(tmp_path_factory.mktemp("charlm"), TEXT)


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _edit_config(run: Path, edit) -> None:
    """Edit every checkpoint's config.json as someone with a text editor would (checksum recomputed, so that the
    validation of the content, not the checksum, is what is tested)."""
    for path in sorted((run / "checkpoints").glob("step-*/config.json")):
        cfg = json.loads(path.read_text())
        edit(cfg)
        if "config_sha256" in cfg and hasattr(checkpoint, "config_digest"):
            cfg["config_sha256"] = checkpoint.config_digest(cfg)
        path.write_text(json.dumps(cfg))


# --- argparse errors: one line instead of usage + error ---------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["train", "cue", "--lag", "1e9"], "--lag"),
    (["train", "cue", "--hidden-size", "abc"], "--hidden-size"),
    (["train", "cue", "--optimizer", "nosuch"], "--optimizer"),
    (["train", "cue", "--nosuch-flag", "1"], "--nosuch-flag"),
    (["generate", "x", "--temperature", "warm"], "--temperature"),
    (["compare", "--lags", "a,b"], "--lags"),
    (["bench", "--repeats", "many"], "--repeats"),
    ([], "COMMAND"),
])
def test_argparse_errors_are_one_line(capsys, argv, needle):
    line = one_line(capsys, argv)
    assert needle in line and "error" in line


# --- bad values on the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle,value", [
    (["--cell-option", "nosuch=1"], "--cell-option nosuch", "nosuch"),
    (["--cell", "lstm", "--cell-option", "forget_bias=1e400"], "--cell-option forget_bias", "inf"),
    (["--cell-option", "reset_after=maybe"], "--cell-option", "maybe"),
    (["--backend", "nosuch"], "--backend", "nosuch"),
    (["--bptt", "5"], "--bptt", "5"),
    (["--hidden-size", "0"], "--hidden-size", "0"),
    (["--hidden-size", str(10**12)], "--hidden-size", str(10**12)),
    (["--num-layers", "100000"], "--num-layers", "100000"),
    (["--n-train", str(10**23)], "--n-train", str(10**23)),
    (["--num-layers", "-3"], "--num-layers", "-3"),
    (["--dropout", "nan"], "--dropout", "nan"),
    (["--zoneout", "1"], "--zoneout", "1"),
    (["--lr", "inf"], "--lr", "inf"),
    (["--seed", "-1"], "--seed", "-1"),
    (["--seed", str(2**70)], "--seed", str(2**70)),
    (["--threads", "100000"], "--threads", "100000"),
    (["--clip-norm", "-1"], "--clip-norm", "-1"),
    (["--lag", "-4"], "--lag", "-4"),
    (["-o", "n_countries=99"], "n_countries", "99"),
    (["-o", "n_val=zero"], "n_val", "zero"),
])
def test_bad_flag_values(capsys, tmp_path, extra, needle, value):
    line = one_line(capsys, ["train", *TINY, *extra, "--out", tmp_path / "r"])
    assert needle in line and value in line
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_batch_size_too_big_for_the_corpus(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    line = one_line(capsys, ["train", "charlm", "--text", text, "--bptt", "8", "--batch-size", "5000",
                             "--hidden-size", "4", "--quiet", "--out", tmp_path / "r"])
    assert "--batch-size" in line and "5000" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("out,needle", [("", "--out"), ("   ", "--out")])
def test_bad_out(capsys, out, needle):
    line = one_line(capsys, ["train", *TINY, "--out", out])
    assert needle in line and repr(out) in line


def test_out_naming_a_file(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    line = one_line(capsys, ["train", *TINY, "--out", f])
    assert "--out" in line and str(f) in line
    assert f.read_text() == "keep me"


# --- bad fields in --config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("config,needle,value", [
    ({"model": {"cell_options": "peepholes"}}, "cell_options", "peepholes"),
    ({"model": {"cell_options": {"nosuch": 1}}}, "cell_options", "nosuch"),
    ({"model": {"cell_options": [1, 2]}}, "cell_options", "[1, 2]"),
    ({"model": {"backend": "nosuch"}}, "backend", "nosuch"),
    ({"model": {"backend": 5}}, "backend", "5"),
    ({"model": {"bidirectional": "yes"}}, "bidirectional", "yes"),
    ({"model": {"hidden_size": "8"}}, "hidden_size", "'8'"),
    ({"model": {"cell": ["gru"]}}, "cell", "['gru']"),
    ({"model": {"nosuch": 1}}, "nosuch", "unknown"),
    ({"train": {"optimizer": 3}}, "optimizer", "3"),
    ({"train": {"batch_size": 2.5}}, "batch_size", "2.5"),
    ({"task": {"name": "cue", "options": [1]}}, "task.options", "[1]"),
    ({"task": {"name": "cue", "options": {"lag": [2]}}}, "lag", "[2]"),
    ({"task": 7}, "task", "7"),
])
def test_bad_config_fields(capsys, tmp_path, config, needle, value):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    argv = ["train", "--config", path, "--out", tmp_path / "r", "--quiet"]
    if "task" not in config:
        argv.insert(1, "cue")
    line = one_line(capsys, argv)
    assert needle in line and value in line


# --- a saved config edited or damaged, on --resume -----------------------------------------------------------
def _set(*keys_value):
    *keys, value = keys_value

    def edit(cfg):
        d = cfg
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


def _delete(*keys):
    def edit(cfg):
        d = cfg
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


RESUME_CASES = [
    (_delete("task"), "task"),
    (_set("task", 5), "task"),
    (_set("task", "name", "nosuch"), "task.name"),
    (_set("task", "name", 5), "task.name"),
    (_set("task", "name", "charlm"), "lag"),  # a cue checkpoint relabelled as a char LM
    (_set("task", "options", [1]), "task.options"),
    (_set("task", "options", "nosuch", 1), "nosuch"),
    (_set("task", "options", "lag", -3), "lag"),
    (_set("task", "options", "lag", "x"), "lag"),
    (_set("task", "options", "n_countries", 4), "output_size"),  # valid options, but not this model's classes
    (_delete("model"), "model"),
    (_set("model", "x"), "model"),
    (_set("model", "cell", "nosuch"), "model.cell"),
    (_set("model", "hidden_size", -8), "hidden_size"),
    (_set("model", "hidden_size", "8"), "hidden_size"),
    (_set("model", "hidden_size", 16), "weights"),  # valid, but the saved weights are 8 wide
    (_set("model", "bidirectional", "yes"), "bidirectional"),
    (_set("model", "backend", "nosuch"), "backend"),
    (_set("model", "cell_options", "x"), "cell_options"),
    (_set("model", "cell_options", "nosuch", 1), "nosuch"),
    (_set("model", "dropout", 2), "dropout"),
    (_set("model", "nosuch", 1), "nosuch"),
    (_delete("train"), "train"),
    (_set("train", []), "train"),
    (_set("train", "batch_size", 0), "batch_size"),
    (_set("train", "lr", "x"), "lr"),
    (_set("train", "optimizer", "nosuch"), "optimizer"),
    (_set("train", "nosuch", 1), "nosuch"),
    (_delete("model_io"), "model_io"),
]


@pytest.mark.parametrize("edit,needle", RESUME_CASES)
def test_resume_with_an_edited_config(capsys, tmp_path, cue_run, edit, needle):
    run = _copy(cue_run, tmp_path)
    _edit_config(run, edit)
    line = one_line(capsys, ["train", "--resume", "--out", run, "--epochs", "3", "--quiet"])
    assert needle in line and "--resume" in line


@pytest.mark.parametrize("edit,needle", [
    (_set("sha256", "abc"), "sha256"),
    (_set("sha256", {"model.safetensors": 5}), "model.safetensors"),
])
def test_damaged_checksums(capsys, tmp_path, cue_run, edit, needle):
    run = _copy(cue_run, tmp_path)
    _edit_config(run, edit)
    for argv in (["train", "--resume", "--out", run, "--epochs", "3"], ["eval", run]):
        assert needle in one_line(capsys, argv)


@pytest.mark.parametrize("latest", [5, None, ["step-1"], {"a": 1}])
def test_non_string_latest_in_the_manifest(capsys, tmp_path, cue_run, latest):
    run = _copy(cue_run, tmp_path)
    path = run / "checkpoints" / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    manifest["latest"] = latest
    path.write_text(json.dumps(manifest))
    line = one_line(capsys, ["train", "--resume", "--out", run, "--epochs", "3"])
    assert "MANIFEST" in line or "latest" in line or "no completed checkpoint" in line


def test_resume_flag_errors(capsys, cue_run, tmp_path):
    run = _copy(cue_run, tmp_path)
    assert "--threads" in one_line(capsys, ["train", "--resume", "--out", run, "--threads", "0"])
    assert "--epochs" in one_line(capsys, ["train", "--resume", "--out", run, "--epochs", "-1"])


# --- generate -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle,value", [
    (["--prime", "€中"], "--prime", "€"),
    (["--temperature", "inf"], "--temperature", "inf"),
    (["--temperature", "nan"], "--temperature", "nan"),
    (["--temperature", "-0.5"], "--temperature", "-0.5"),
    (["--top-k", "0"], "--top-k", "0"),
    (["--length", "-1"], "--length", "-1"),
    (["--seed", "-1"], "--seed", "-1"),
    (["--prime", ""], "--prime", "empty"),
])
def test_generate_bad_values(capsys, charlm_run, extra, needle, value):
    run, text = charlm_run
    line = one_line(capsys, ["generate", run, "--data", text, "--length", "3", *extra])
    assert needle in line and value in line


def test_generate_greedy_and_huge_top_k_work(capsys, charlm_run):
    # temperature 0 is documented as greedy, and a top-k above the vocabulary keeps every character
    run, text = charlm_run
    assert main(["generate", str(run), "--data", str(text), "--prime", "the", "--length", "4", "--temperature", "0",
                 "--top-k", "100000"]) == 0
    assert len(capsys.readouterr().out) >= 4


def test_generate_on_an_edited_config(capsys, tmp_path, charlm_run):
    run = _copy(charlm_run[0], tmp_path)
    _edit_config(run, _set("task", "options", "seq_len", -1))
    assert "seq_len" in one_line(capsys, ["generate", run, "--data", charlm_run[1], "--length", "2"])


# --- compare / bench: refused before any run starts --------------------------------------------------------------
@pytest.mark.parametrize("argv,needle,value", [
    (["compare", "--cells", "rnn,nosuch"], "--cells", "nosuch"),
    (["compare", "--cells", ","], "--cells", "','"),
    (["compare", "--lags", "-1"], "--lags", "-1"),
    (["compare", "--seeds", "-2"], "--seeds", "-2"),
    (["compare", "--lr", "nan"], "--lr", "nan"),
    (["compare", "--forget-bias", "inf"], "--forget-bias", "inf"),
    (["compare", "--task", "nosuch"], "--task", "nosuch"),
    (["compare", "-o", "n_countries=1"], "n_countries", "1"),
    (["compare", "--jobs", "100000"], "--jobs", "100000"),
    (["compare", "--threads", "100000"], "--threads", "100000"),
    (["bench", "--threads", "100000"], "--threads", "100000"),
    (["bench", "--shapes", "1,2"], "--shapes", "1,2"),
    (["bench", "--cells", "nosuch"], "--cells", "nosuch"),
    (["bench", "--repeats", "0"], "--repeats", "0"),
])
def test_compare_and_bench_bad_values(capsys, tmp_path, argv, needle, value):
    if argv[0] == "compare":
        argv = [*argv, "--out", str(tmp_path / "c")]
    line = one_line(capsys, argv)
    assert needle in line and value in line


@pytest.mark.parametrize("cmd", ["compare", "bench"])
def test_compare_and_bench_out_errors(capsys, tmp_path, cmd):
    f = tmp_path / "file"
    f.write_text("x")
    target = f if cmd == "compare" else tmp_path  # compare needs a directory, bench a file
    assert "--out" in one_line(capsys, [cmd, "--out", target])
    if cmd == "bench":
        assert "--out" in one_line(capsys, [cmd, "--out", tmp_path / "no" / "such" / "dir.json"])


# --- resources: memory and disk -> exit 1, one line naming the cause and what was kept --------------------------
@pytest.mark.parametrize("size", ["1000000", str(2**31 - 1)])
def test_model_too_big_for_memory(capsys, tmp_path, size):
    # counted on the meta device before any allocation (the largest width overflows even the count)
    line = one_line(capsys, ["train", *TINY, "--hidden-size", size, "--out", tmp_path / "r"], code=1)
    assert "not enough memory" in line and f"hidden_size={size}" in line and "kept: nothing" in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_task_data_too_big_for_memory(capsys, tmp_path):
    # 10^9 filler words per sequence: the allocator refuses at once (more than RAM + swap)
    line = one_line(capsys, ["train", *TINY, "--lag", "1000000000", "--out", tmp_path / "r"], code=1)
    assert "not enough memory" in line and "kept" in line


def _failing_save(exc, after=0):
    calls = {"n": 0}
    real = checkpoint.save_file

    def save_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return real(*args, **kwargs)
    return save_file


@pytest.mark.parametrize("exc,cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk full"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (MemoryError(), "not enough memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes"), "not enough memory"),
])
def test_disk_failure_on_the_first_checkpoint(capsys, tmp_path, monkeypatch, exc, cause):
    monkeypatch.setattr(checkpoint, "save_file", _failing_save(exc))
    line = one_line(capsys, ["train", *TINY, "--out", tmp_path / "r"], code=1)
    assert cause in line and "kept: nothing" in line


def test_read_only_directory(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode bits: the monkeypatched cases above cover it
            pytest.skip("running as root: chmod 0o555 does not stop writes")
        line = one_line(capsys, ["train", *TINY, "--out", ro / "run"], code=1)
        assert "permission denied" in line and "kept: nothing" in line
    finally:
        ro.chmod(0o755)


def test_disk_full_later_keeps_the_checkpoints(capsys, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    # two files per checkpoint: the second checkpoint's first write fails
    monkeypatch.setattr(checkpoint, "save_file", _failing_save(SafetensorError("Error while serializing: I/O"),
                                                               after=2))
    out = tmp_path / "r"
    line = one_line(capsys, ["train", *TINY, "--epochs", "2", "--out", out], code=1)
    assert "cannot write" in line and "step-00000002" in line and "--resume" in line
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(out), "--quiet"]) == 0


def test_a_bug_still_shows_its_traceback(monkeypatch, tmp_path):
    # an exception that is neither a user mistake nor a resource failure is rnnlab's bug: not hidden
    monkeypatch.setattr(checkpoint, "save_file", _failing_save(KeyError("internal")))
    with pytest.raises(KeyError):
        main(["train", *TINY, "--out", str(tmp_path / "r")])


@pytest.mark.parametrize("edit,needle", RESUME_CASES)
def test_eval_with_an_edited_config(capsys, tmp_path, cue_run, edit, needle):
    run = _copy(cue_run, tmp_path)
    _edit_config(run, edit)
    assert needle in one_line(capsys, ["eval", run])
