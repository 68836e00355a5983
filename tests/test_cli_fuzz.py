"""Fuzzing the CLI's options with random bad values: always exit 2 (or 1 for memory) with one stderr line."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stderr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlab.cells import cell_names
from rnnlab.cli import main
from cli_helpers import tiny_charlm_run  # noqa: E402

# a bounded number of examples in the default suite, many more under -m slow
settings.register_profile("cli-default", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("cli-slow", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

#: a cue run that would train in about a second: every drawn value must stop it at validation
BASE = ["train", "cue", "--lag", "2", "-o", "n_countries=3", "--n-train", "32", "-o", "n_val=16", "-o", "n_test=16",
        "--cell", "gru", "--hidden-size", "8", "--embedding-dim", "4", "--batch-size", "16", "--epochs", "1",
        "--backend", "reference", "--threads", "1", "--quiet"]

# text that is not a number: letters, punctuation, unicode, control characters, empty
words = st.text(min_size=0, max_size=12).filter(lambda s: not _is_number(s))
non_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-1e400"])


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def bad_int(lo: int, huge: bool = False) -> st.SearchStrategy[str]:
    """Values an integer option >= ``lo`` must refuse; ``huge`` adds sizes no machine has memory for."""
    options = [words, st.integers(max_value=lo - 1).map(str), st.floats(allow_nan=True).map(repr), non_finite]
    if huge:
        options.append(st.integers(min_value=10**12, max_value=10**30).map(str))
    return st.one_of(*options)


def bad_real(lo: float, hi: float = math.inf, lo_open: bool = False) -> st.SearchStrategy[str]:
    """Values a real option in [lo, hi] (or (lo, hi]) must refuse."""
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False)
    options = [words, non_finite, below.map(repr)]
    if hi != math.inf:
        options.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(*options)


def not_in(valid) -> st.SearchStrategy[str]:
    return st.text(max_size=12).filter(lambda s: s not in valid)


TRAIN_OPTIONS = {
    "--hidden-size": bad_int(1, huge=True), "--num-layers": bad_int(1), "--embedding-dim": bad_int(1, huge=True),
    "--dropout": bad_real(0, 1), "--recurrent-dropout": bad_real(0, 1), "--zoneout": bad_real(0, 1),
    "--cell": not_in(cell_names()), "--backend": not_in(["auto", "cpp", "reference"]),
    "--epochs": bad_int(1), "--max-steps": bad_int(1), "--batch-size": bad_int(1), "--bptt": bad_int(1),
    "--optimizer": not_in(["adam", "adamw", "sgd", "rmsprop"]), "--lr": bad_real(0, 10, lo_open=True),
    "--momentum": bad_real(0, 1), "--weight-decay": bad_real(0, 1), "--warmup": bad_int(0),
    "--step-size": bad_int(1), "--gamma": bad_real(0, 1, lo_open=True), "--clip-norm": bad_real(0),
    "--eval-every": bad_int(0), "--patience": bad_int(0), "--checkpoint-every": bad_int(0), "--keep": bad_int(1),
    "--log-every": bad_int(1), "--seed": st.one_of(bad_int(0), st.integers(min_value=2**64).map(str)),
    "--threads": st.one_of(bad_int(1), st.integers(min_value=5000, max_value=10**9).map(str)),
    "--lag": bad_int(0, huge=True), "--n-train": bad_int(1), "--out": st.sampled_from(["", " ", "\t"]),
    "--schedule": not_in(["constant", "cosine", "step"]),
}
#: KEY=VALUE options: a random key (not an option) or a known key with a bad value
KEY_VALUES = st.one_of(
    st.tuples(st.just("-o"), st.tuples(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(
        lambda k: k not in ("lag", "n_countries", "filler_words", "n_train", "n_val", "n_test", "seed")), words)),
    st.tuples(st.just("-o"), st.tuples(st.sampled_from(["n_countries", "n_val", "n_test", "filler_words", "seed"]),
                                       st.one_of(words, st.integers(max_value=-1).map(str)))),
    st.tuples(st.just("--cell-option"), st.tuples(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(
        lambda k: k != "reset_after"), st.one_of(words, st.integers().map(str)))),
    st.tuples(st.just("--cell-option"), st.tuples(st.just("reset_after"), st.one_of(words, non_finite))),
)


def check(argv: list[str]) -> None:
    """One CLI call in-process: exit 1 or 2, one non-empty stderr line, no traceback."""
    buf = io.StringIO()
    with redirect_stderr(buf):  # hypothesis runs many examples per test: capsys would mix them
        code = main(argv)
    err = buf.getvalue()
    assert code in (1, 2), (argv, code, err)
    assert len(err.strip().splitlines()) == 1 and err.strip(), (argv, err)
    assert "Traceback" not in err


@st.composite
def train_argv(draw) -> list[str]:
    argv = list(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        if draw(st.booleans()):
            flag = draw(st.sampled_from(sorted(TRAIN_OPTIONS)))
            argv.append(f"{flag}={draw(TRAIN_OPTIONS[flag])}")  # "=": a value starting with "-" stays a value
        else:
            flag, (key, value) = draw(KEY_VALUES)
            argv += [flag, f"{key}={value}"]
    return argv


COMPARE_OPTIONS = {
    "--cells": not_in(cell_names()).filter(lambda s: "," not in s), "--lags": st.integers(max_value=-1).map(str),
    "--seeds": st.one_of(words, st.integers(max_value=-1).map(str)), "--hidden-size": bad_int(1),
    "--epochs": bad_int(1), "--batch-size": bad_int(1), "--lr": bad_real(0, 10, lo_open=True),
    "--n-train": bad_int(1), "--forget-bias": non_finite, "--jobs": bad_int(1), "--threads": bad_int(1),
    "--task": not_in(["cue", "copy", "adding"]),
}
BENCH_OPTIONS = {
    "--repeats": bad_int(1), "--threads": bad_int(1), "--cells": not_in(cell_names() + ["all"]),
    "--shapes": st.one_of(words, st.tuples(st.integers(max_value=0), st.integers(1, 4), st.integers(1, 4)).map(
        lambda t: ",".join(map(str, t)))),
}


@st.composite
def other_argv(draw) -> list[str]:
    cmd, table = draw(st.sampled_from([("compare", COMPARE_OPTIONS), ("bench", BENCH_OPTIONS)]))
    flag = draw(st.sampled_from(sorted(table)))
    argv = [cmd]
    if cmd == "compare":  # small, so that a value the validation missed would still end quickly (drawn flag last)
        argv += ["--epochs", "1", "--n-train", "8", "--hidden-size", "4", "--jobs", "1", "--out", "/nonexistent/x"]
    return [*argv, f"{flag}={draw(table[flag])}"]


TEXT = " ".join(["the quick brown fox jumps over a lazy dog"] * 40)
GENERATE_OPTIONS = {
    "--length": bad_int(0), "--temperature": bad_real(0), "--top-k": bad_int(1),
    "--seed": st.one_of(bad_int(0), st.integers(min_value=2**64).map(str)),
    # text with at least one character the tiny corpus does not have
    "--prime": st.text(min_size=1, max_size=8).filter(lambda s: not set(s) <= set(TEXT)),
}


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    """A char-LM run of two steps on a small text file: (run directory, text file)."""
    out, text = tiny_charlm_run(tmp_path_factory.mktemp("fuzz-charlm"), TEXT)
    return str(out), str(text)


@st.composite
def generate_flags(draw) -> list[str]:
    flag = draw(st.sampled_from(sorted(GENERATE_OPTIONS)))
    return ["--prime", "the", "--length", "3", f"{flag}={draw(GENERATE_OPTIONS[flag])}"]


@settings(settings.get_profile("cli-default"))
@given(flags=generate_flags())
def test_generate_rejects_bad_values_in_one_line(charlm_run, flags):
    run, text = charlm_run
    check(["generate", run, "--data", text, *flags])


@settings(settings.get_profile("cli-default"))
@given(train_argv())
def test_train_rejects_bad_values_in_one_line(argv):
    check(argv)


@settings(settings.get_profile("cli-default"))
@given(other_argv())
def test_compare_and_bench_reject_bad_values_in_one_line(argv):
    check(argv)


@pytest.mark.slow
@settings(settings.get_profile("cli-slow"))
@given(st.one_of(train_argv(), other_argv()), generate_flags())
def test_cli_fuzz_many(charlm_run, argv, flags):
    check(argv)
    check(["generate", charlm_run[0], "--data", charlm_run[1], *flags])
