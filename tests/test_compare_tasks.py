"""compare over tasks instead of lags: the layout of a variant study (Greff et al. 2015 preset)."""

from __future__ import annotations

import dataclasses

from rnnlab.compare import GREFF_STUDY, GridSpec, compare, task_ranks, task_table

TINY = {"n_train": 64, "n_val": 16, "n_test": 16}


def test_cells_by_tasks_table_ranks_and_plot(tmp_path):
    spec = GridSpec(cells=["greff_v", "greff_nfg"], lags=[], seeds=[0, 1], tasks=["cue", "adding"],
                    task_options_by_task={"cue": {"lag": 3, **TINY}, "adding": {"lag": 4, **TINY}},
                    model={"hidden_size": 8, "embedding_dim": 4},
                    train={"epochs": 1, "batch_size": 16, "lr": 1e-2})
    rows, files = compare(spec, tmp_path)
    assert len(rows) == 8 and {r["task"] for r in rows} == {"cue", "adding"}
    assert {r["metric"] for r in rows if r["task"] == "adding"} == {"mse"}
    table = files["table"].read_text()
    assert "cue accuracy ↑" in table and "adding mse ↓" in table and "mean rank" in table
    ranks = task_ranks(rows)
    assert set(ranks) == {"greff_v", "greff_nfg"} and all(1 <= r <= 2 for r in ranks.values())
    assert files["plot"].stat().st_size > 1000


def test_ranks_follow_each_tasks_direction():
    rows = [{"cell": c, "task": t, "seed": 0, "value": v, "metric": m, "higher_is_better": h, "baseline": None}
            for c, t, v, m, h in [("a", "x", 0.9, "acc", True), ("b", "x", 0.5, "acc", True),
                                  ("a", "y", 3.0, "bpc", False), ("b", "y", 2.0, "bpc", False)]]
    assert task_ranks(rows) == {"a": 1.5, "b": 1.5}
    assert task_table(rows).splitlines()[0] == "| cell | x acc ↑ | y bpc ↓ | mean rank |"


def test_greff_preset_is_a_valid_grid_of_every_variant():
    spec = dataclasses.replace(GREFF_STUDY).validate()
    assert len(spec.cells) == 9 and spec.tasks == ["vowels", "charlm"]
    assert len(spec.runs()) == 9 * 2 * len(spec.seeds)
