"""Tests of the task loaders on their real data: shapes, splits, determinism, baselines, generation, errors."""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter

import numpy as np
import pytest
import torch

from rnnlab.models import ModelConfig, SequenceModel
from rnnlab.tasks import TASKS, generate, make_task, summarize, task_names
from rnnlab.train.trainer import reduce_metrics
from rnnlab.tasks._util import package_data
from rnnlab.tasks.charlm import UNK, CharLMConfig, CharLMTask, shakespeare_dir
from rnnlab.tasks.classify import DigitsTask, VowelsTask, read_ts
from rnnlab.tasks.forecast import ForecastConfig, SunspotsTask, WeatherTask

SMALL = {
    "adding": dict(lag=12, n_train=32, n_val=16, n_test=16),
    "copy": dict(lag=6, n_copy=3, n_train=32, n_val=16, n_test=16),
    "cue": dict(lag=6, n_train=32, n_val=16, n_test=16),
    "charlm": dict(works=("sonnets",), seq_len=32),
    "weather": dict(window=10),
    "sunspots": dict(window=24),
    "vowels": {},
    "digits": {},
    "wordlm": dict(works=("sonnets",), vocab_size=500, seq_len=16),
    "punctuation": dict(works=("sonnets",), seq_len=16),
}
#: tasks whose model is not a plain SequenceModel or whose data is synthesised: their own files test them
OWN_TESTS = {"g2p": "tests/test_g2p.py (Seq2Seq model)", "speech": "tests/test_speech.py (espeak-ng audio)"}


# ------------------------------------------------------------------ registry
def test_registry_lists_every_task_and_rejects_unknown_names_and_options():
    assert set(task_names()) == set(SMALL) | set(OWN_TESTS)
    with pytest.raises(ValueError, match=r"task: unknown 'nope'.*adding"):
        make_task("nope")
    with pytest.raises(ValueError, match=r"lagg: not an option of task 'adding'.*'lag'"):
        make_task("adding", lagg=3)
    with pytest.raises(ValueError, match=r"lag: expected int, got 'x'"):
        make_task("adding", lag="x")
    with pytest.raises(ValueError, match=r"lag: expected an int >= 2, got 1"):
        make_task("adding", lag=1)
    with pytest.raises(ValueError, match="n_countries: expected at most"):
        make_task("cue", n_countries=99)


def test_cli_strings_are_converted_to_field_types():
    task = make_task("charlm", works="sonnets", seq_len="16", max_chars="none")
    assert task.config.works == ("sonnets",) and task.config.seq_len == 16 and task.config.max_chars is None
    assert make_task("weather", calendar="false", window="5").input_size == 4


@pytest.mark.parametrize("name", list(SMALL))
def test_every_task_runs_through_a_sequence_model(name):
    """Forward + loss + backward + metrics for every task, with the model built as the trainer builds it."""
    task = make_task(name, **SMALL[name])
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(cell="lstm", hidden_size=8, embedding_dim=4), input_size=task.input_size,
                          output_size=task.output_size, target=task.target, vocab_size=task.vocab_size)
    for split in ("train", "val", "test"):
        assert task.num_examples(split) == sum(len(b) for b in task.batches(split, 64))
    batch = next(task.batches("train", 8, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert batch.x.shape[0] == batch.y.shape[0] == 8
    assert batch.x.dtype == (torch.int64 if task.vocab_size else torch.float32)
    out, _ = model(batch.x, batch.lengths)
    loss = task.loss(out, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    m = task.metrics(out.detach(), batch)
    # the task's metric as the trainer reports it (some, like wordlm's perplexity, derive it from the sums)
    assert task.metric in reduce_metrics(task, m) and m["count"] > 0
    # the metrics are sums: their mean "loss" is the training loss
    assert summarize(m)["loss"] == pytest.approx(loss.item(), rel=1e-5)
    base = task.baseline("test")
    assert task.metric in base and math.isfinite(base[task.metric])
    assert name in task.describe()


def test_shuffle_is_deterministic_with_a_generator():
    task = make_task("digits")
    a = [b.y for b in task.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(3))]
    b = [b.y for b in task.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(3))]
    c = [b.y for b in task.batches("train", 100, shuffle=True, generator=torch.Generator().manual_seed(4))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    with pytest.raises(ValueError, match="split: expected one of"):
        next(task.batches("training", 4))
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        next(task.batches("train", 0))


# ------------------------------------------------------------------ synthetic
@pytest.mark.parametrize("name", ["adding", "copy", "cue"])
def test_synthetic_tasks_are_deterministic_in_the_seed(name):
    a, b = make_task(name, **SMALL[name]), make_task(name, **SMALL[name])
    c = make_task(name, **SMALL[name], seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split_tensors(split)[0], b.split_tensors(split)[0])
        assert torch.equal(a.split_tensors(split)[1], b.split_tensors(split)[1])
        assert not torch.equal(a.split_tensors(split)[0], c.split_tensors(split)[0])
    assert not torch.equal(a.split_tensors("train")[0][:16], a.split_tensors("val")[0])


def test_adding_problem_layout_targets_and_baseline():
    task = make_task("adding", lag=40, n_train=2000, n_val=10, n_test=10)
    x, y, lengths = task.split_tensors("train")
    assert x.shape == (2000, 40, 2) and y.shape == (2000, 1) and lengths is None
    markers = x[..., 1]
    assert torch.equal(markers[:, :20].sum(1), torch.ones(2000))  # one marker per half
    assert torch.equal(markers[:, 20:].sum(1), torch.ones(2000))
    assert torch.allclose((x[..., 0] * markers).sum(1, keepdim=True), y)
    base = task.baseline("train")
    assert base["mse"] == pytest.approx(float(((y - 1.0) ** 2).mean()))
    assert base["mse"] == pytest.approx(1 / 6, abs=0.015)  # Var(U1 + U2)


def test_copy_memory_layout_and_memoryless_baseline():
    task = make_task("copy", lag=10, n_symbols=4, n_copy=3, n_train=3000, n_val=10, n_test=400)
    x, y, _ = task.split_tensors("train")
    assert x.shape == y.shape == (3000, 10 + 6) and x.dtype == torch.int64
    assert task.vocab_size == 6 and task.output_size == 4
    assert torch.equal(y[:, 13:], x[:, :3] - 1)  # recall = the first symbols, in order
    assert (y[:, :13] == -100).all()
    assert (x[:, 12] == 5).all() and (x[:, 3:12] == 0).all() and (x[:, 13:] == 0).all()
    base = task.baseline("test")
    yt = task.split_tensors("test")[1]
    yt = yt[yt != -100]
    majority = Counter(y[y != -100].tolist()).most_common(1)[0][0]
    assert base["accuracy"] == pytest.approx(float((yt == majority).float().mean()))
    assert base["bits"] == pytest.approx(2.0, abs=0.01)  # log2(4 symbols)
    assert base["accuracy"] == pytest.approx(0.25, abs=0.05)


def test_cue_task_country_decides_the_language():
    task = make_task("cue", lag=15, n_countries=5, n_train=500, n_val=10, n_test=200)
    x, y, _ = task.split_tensors("train")
    assert x.shape == (500, 15 + 10) and y.shape == (500,)
    for row, label in zip(x[:50], y[:50]):
        words = task.decode(row)
        assert words[:4] == ["i", "grew", "up", "in"] and words[-4:] == ["so", "i", "speak", "fluent"]
        assert task.countries.index(words[4]) == int(label)
        assert not set(words[6:-4]) & set(task.countries)  # the filler never names a country
    base = task.baseline("test")
    assert base["accuracy"] == pytest.approx(0.2, abs=0.07)
    narrow = make_task("cue", lag=30, filler_words=2, n_train=50, n_val=5, n_test=5)
    assert set(narrow.decode(narrow.split_tensors("train")[0][:, 6:-4].flatten())) == {"the", "weather"}


# ------------------------------------------------------------------ char LM
@pytest.fixture(scope="module")
def sonnets() -> CharLMTask:
    return CharLMTask(CharLMConfig(works=("sonnets",), seq_len=32))


def test_charlm_splits_are_the_contiguous_stream_and_vocab_comes_from_train(sonnets):
    text = (shakespeare_dir() / "sonnets_gut.txt").read_text()
    streams = [sonnets.stream(s) for s in ("train", "val", "test")]
    assert sum(len(s) for s in streams) == len(text)
    assert len(streams[1]) == len(streams[2]) == round(0.05 * len(text))
    train_text = text[:len(streams[0])]
    assert sonnets.decode(streams[0]) == train_text
    train_chars = set(train_text)
    assert set(sonnets.chars[1:]) == train_chars
    expected_tail = "".join(ch if ch in train_chars else UNK for ch in text[len(train_text):])
    assert sonnets.decode(torch.cat(streams[1:])) == expected_tail


def test_charlm_batches_and_stream_batches(sonnets):
    b = next(sonnets.batches("val", 4))
    s = sonnets.stream("val")
    assert b.x.shape == b.y.shape == (4, 32) and b.x.dtype == torch.int64
    assert torch.equal(b.x[1], s[32:64]) and torch.equal(b.y[1], s[33:65])
    chunks = list(sonnets.stream_batches("val", 3, 20))
    L = (len(s) - 1) // 3
    assert [c.reset for c in chunks] == [True] + [False] * (len(chunks) - 1)
    x = torch.cat([c.batch.x for c in chunks], dim=1)  # (3, L): each row a contiguous stretch of the stream
    y = torch.cat([c.batch.y for c in chunks], dim=1)
    assert x.shape == (3, L)
    for r in range(3):
        assert torch.equal(x[r], s[r * L:(r + 1) * L]) and torch.equal(y[r], s[r * L + 1:(r + 1) * L + 1])


def test_charlm_baseline_is_the_train_unigram_cross_entropy(sonnets):
    train = sonnets.stream("train").tolist()
    counts = Counter(train)
    V = sonnets.vocab_size
    total = len(train) + V
    targets = sonnets.stream("test").tolist()[1:]
    bits = -sum(math.log2((counts.get(t, 0) + 1) / total) for t in targets) / len(targets)
    assert sonnets.baseline("test")["bpc"] == pytest.approx(bits, rel=1e-9)
    assert 4.0 < bits < 5.0


def test_charlm_reads_any_text_file_and_rejects_bad_ones(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("héllo wörld, " * 200, encoding="utf-8")
    task = make_task("charlm", path=str(good), seq_len=16)
    assert "é" in task.chars and task.vocab_size == len(set(good.read_text())) + 1
    cases = {"empty.txt": b"", "blank.txt": b"  \n\n", "binary.bin": b"\x00\x01\x02abc" * 50,
             "latin1.txt": "café ".encode("latin-1") * 300}
    messages = {"empty.txt": "is empty", "blank.txt": "is empty", "binary.bin": "binary",
                "latin1.txt": "not UTF-8"}
    for fname, data in cases.items():
        path = tmp_path / fname
        path.write_bytes(data)
        with pytest.raises(ValueError, match=f"path: .*{fname}.*{messages[fname]}"):
            make_task("charlm", path=str(path))
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be " * 20)
    with pytest.raises(ValueError, match=r"path: .*short\.txt.* too short"):
        make_task("charlm", path=str(short), seq_len=64)
    with pytest.raises(ValueError, match="is not a file"):
        make_task("charlm", path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="works: unknown"):
        make_task("charlm", works=("hamlet", "nosuchplay"))


def _constant_model(task: CharLMTask, favourites: dict[str, float]) -> SequenceModel:
    """A model whose logits ignore the input: the head's bias alone decides the distribution."""
    model = SequenceModel(ModelConfig(hidden_size=8, embedding_dim=4), input_size=1, output_size=task.output_size,
                          target="seq_class", vocab_size=task.vocab_size)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(0.0)
        for ch, logit in favourites.items():
            model.head.bias[task._index[ch]] = logit
    return model


def test_generate_length_top_k_greedy_and_determinism(sonnets):
    model = _constant_model(sonnets, {"a": 5.0, "b": 5.0, "c": 4.9, "d": 1.0})
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    text = generate(model, sonnets, "Shall I", 300, top_k=3, generator=g())
    assert len(text) == 300 and set(text) == {"a", "b", "c"}  # top-3 only, and all three are drawn
    assert generate(model, sonnets, "Shall I", 300, top_k=3, generator=g()) == text
    assert set(generate(model, sonnets, "x", 50, temperature=0)) <= {"a", "b"}  # greedy: a top-1 char
    assert len(set(generate(model, sonnets, "x", 400, generator=g()))) > 3  # no top_k: the tail is sampled
    assert generate(model, sonnets, "x", 0) == ""
    assert model.training  # the mode is restored


def test_generate_carries_state_like_a_full_forward(sonnets):
    torch.manual_seed(0)
    model = SequenceModel(ModelConfig(hidden_size=16, embedding_dim=8), input_size=1,
                          output_size=sonnets.output_size, target="seq_class", vocab_size=sonnets.vocab_size)
    prime = "When I do count"
    text = generate(model, sonnets, prime, 20, temperature=0)
    # greedy decoding re-run from scratch on prime + text must pick the same characters
    model.eval()
    with torch.no_grad():
        out, _ = model(sonnets.encode(prime + text).unsqueeze(0))
    out[..., 0] = -math.inf
    greedy = out[0, len(prime) - 1:-1].argmax(-1)
    assert sonnets.decode(greedy) == text


def test_generate_rejects_bad_arguments(sonnets):
    model = _constant_model(sonnets, {})
    with pytest.raises(ValueError, match="prime: expected a non-empty string"):
        generate(model, sonnets, "", 5)
    with pytest.raises(ValueError, match="text: characters .*'☃'"):
        generate(model, sonnets, "snow☃", 5)
    with pytest.raises(ValueError, match="temperature: expected a number >= 0, got -1"):
        generate(model, sonnets, "a", 5, temperature=-1)
    with pytest.raises(ValueError, match="top_k: expected an int >= 1, got 0"):
        generate(model, sonnets, "a", 5, top_k=0)
    with pytest.raises(ValueError, match="length: expected an int >= 0"):
        generate(model, sonnets, "a", -3)


# ------------------------------------------------------------------ forecasting
def _seattle_csv() -> list[dict[str, str]]:
    path = package_data("vega_datasets", "_data", "seattle-weather.csv", install="pip install vega_datasets")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_weather_split_by_time_without_leakage_and_train_only_statistics():
    task = WeatherTask(ForecastConfig(window=30))
    rows = {s: task.target_rows(s) for s in ("train", "val", "test")}
    assert rows["train"].max() < rows["val"].min() and rows["val"].max() < rows["test"].min()
    assert all((np.diff(r) == 1).all() for r in rows.values())
    assert rows["test"].max() == 1460 and rows["train"].min() == 30
    temps = np.array([float(r["temp_max"]) for r in _seattle_csv()])
    train_end = rows["train"].max() + 1
    # statistics of the train period only (changing later data cannot move them)
    assert float(task.target_mean) == pytest.approx(temps[:train_end].mean())
    assert float(task.target_std) == pytest.approx(temps[:train_end].std(), rel=1e-6)
    x, y, _ = task.split_tensors("test")
    assert x.shape == (len(rows["test"]), 30, 6) and y.shape == (len(rows["test"]), 1)
    # the target is the next day's temp_max, the window ends the day before
    assert torch.allclose(task.to_units(y.double()).squeeze(1), torch.tensor(temps[rows["test"]]), atol=1e-4)
    col = task.feature_names.index("temp_max")
    last_in_window = x[:, -1, col].double() * float(task.target_std) + float(task.target_mean)
    assert torch.allclose(last_in_window, torch.tensor(temps[rows["test"] - 1]), atol=1e-4)


def test_weather_baselines_recomputed_by_hand():
    task = WeatherTask()
    data = _seattle_csv()
    dates = [r["date"] for r in data]
    temp = {r["date"]: float(r["temp_max"]) for r in data}
    times = task.target_times("test")
    naive_err, seasonal_err = [], []
    for t in times:
        i = dates.index(t.strftime("%Y/%m/%d"))
        naive_err.append(temp[dates[i]] - temp[dates[i - 1]])
        seasonal_err.append(temp[dates[i]] - temp[dates[i - 365]])
    base = task.baseline("test")
    assert base["mae"] == pytest.approx(np.abs(naive_err).mean())
    assert base["rmse"] == pytest.approx(math.sqrt(np.square(naive_err).mean()))
    assert base["seasonal_naive_mae"] == pytest.approx(np.abs(seasonal_err).mean())
    assert base["seasonal_naive_rmse"] == pytest.approx(math.sqrt(np.square(seasonal_err).mean()))
    assert "seasonal_naive_mae" not in task.baseline("train")  # the first year has no season before it


def test_forecast_metrics_are_in_original_units():
    task = WeatherTask(ForecastConfig(targets=("temp_max", "temp_min"), window=7, horizon=2))
    batch = next(task.batches("test", 50))
    assert batch.y.shape == (50, 2) and task.output_size == 2
    pred = batch.y + 0.1  # 0.1 standard deviations too high, per column
    m = summarize(task.metrics(pred, batch))
    assert m["mae"] == pytest.approx(float(0.1 * task.target_std.mean()), rel=1e-5)
    naive = task.naive_forecast("test")
    truth = task.targets_in_units("test")
    assert task.baseline("test")["mae"] == pytest.approx(float((naive - truth).abs().mean()))
    with pytest.raises(ValueError, match=r"targets: unknown column\(s\) \['snow'\]"):
        WeatherTask(ForecastConfig(targets=("snow",)))


def test_sunspots_loader_and_seasonal_baseline():
    task = SunspotsTask()
    path = package_data("pmdarima", "datasets", "data", "sunspots.txt.gz", install="pip install pmdarima")
    with gzip.open(path, "rt") as f:
        raw = np.array(f.read().split(), dtype=float)
    assert len(raw) == 2820 and task.series.times[0].year == 1749 and task.series.times[-1].year == 1983
    truth = task.targets_in_units("test").squeeze(1).numpy()
    rows = task.target_rows("test")
    assert np.allclose(truth, raw[rows])
    base = task.baseline("test")
    assert base["mae"] == pytest.approx(np.abs(raw[rows] - raw[rows - 1]).mean())
    assert base["seasonal_naive_mae"] == pytest.approx(np.abs(raw[rows] - raw[rows - 132]).mean())
    assert task.input_size == 1  # no calendar features: the solar cycle is not a calendar season


# ------------------------------------------------------------------ classification
def test_japanese_vowels_lengths_padding_and_official_splits():
    task = VowelsTask()
    path = package_data("sktime", "datasets", "data", "JapaneseVowels", "JapaneseVowels_TEST.ts",
                        install="pip install --no-deps sktime")
    series, labels = read_ts(path)
    assert len(series) == 370 and task.num_examples("test") == 370
    assert task.num_examples("train") + task.num_examples("val") == 270
    x, y, lengths = task.split_tensors("test")
    assert lengths.tolist() == [len(s) for s in series]
    assert y.tolist() == [int(c) - 1 for c in labels]
    all_lengths = torch.cat([task.split_tensors(s)[2] for s in ("train", "val", "test")])
    assert int(all_lengths.min()) == 7 and int(all_lengths.max()) == 29
    assert x.shape == (370, 29, 12) and x.dtype == torch.float32
    for i in range(0, 370, 37):
        assert (x[i, lengths[i]:] == 0).all() and (x[i, lengths[i] - 1] != 0).any()
    # standardised with the train split's valid steps only
    xt, _, lt = task.split_tensors("train")
    valid = torch.cat([xt[i, :lt[i]] for i in range(len(lt))])
    assert torch.allclose(valid.mean(0), torch.zeros(12), atol=1e-4)
    raw = VowelsTask(make_task("vowels").config.__class__(standardize=False))
    assert np.allclose(raw.split_tensors("test")[0][0, :lengths[0]].numpy(), series[0], atol=1e-6)
    for batch in task.batches("test", 64):
        assert batch.x.shape[1] == int(batch.lengths.max())
    assert task.baseline("test")["accuracy"] == pytest.approx(
        float((y == int(torch.bincount(task.split_tensors("train")[1]).argmax())).float().mean()))


def test_digits_row_by_row_and_disjoint_splits():
    task = DigitsTask()
    from rnnlab.tasks.classify import digits
    images, labels = digits()
    assert images.shape == (1797, 8, 8)
    xs = torch.cat([task.split_tensors(s)[0] for s in ("train", "val", "test")])
    assert xs.shape == (1797, 8, 8) and float(xs.max()) == 1.0
    # every image appears exactly once across the splits, row r of the image = step r
    flat = {tuple((img.flatten() / 16).round(decimals=4).tolist()) for img in images}
    seen = [tuple(v.flatten().round(decimals=4).tolist()) for v in xs]
    assert set(seen) == flat
    assert sum(task.num_examples(s) for s in ("train", "val", "test")) == 1797
    assert make_task("digits", seed=1).split_tensors("test")[1].tolist() != task.split_tensors("test")[1].tolist()


def test_task_specs_document_their_options():
    for name, spec in TASKS.items():
        assert spec.summary and spec.options(), name
