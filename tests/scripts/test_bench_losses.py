from __future__ import annotations

import json
import runpy
from pathlib import Path

from mmpref.losses import LISTWISE_LOSSES, PAIRWISE_LOSSES

# scripts/ is not a package: load the file itself and take its main().
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_losses.py"


def test_bench_losses_writes_one_row_per_loss_with_positive_times(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--batch", "64", "--k", "4", "--repeats", "2", "--device", "cpu", "--out-dir", str(tmp_path)])

    result = json.loads((tmp_path / "bench_losses.json").read_text())
    rows = result["rows"]
    names = [r["loss"] for r in rows]
    # One row per registered loss, plus one for ranklist's non-default approx form, and nothing twice.
    assert len(names) == len(set(names)) == len(PAIRWISE_LOSSES) + len(LISTWISE_LOSSES) + 1
    assert set(PAIRWISE_LOSSES) | set(LISTWISE_LOSSES) < set(names)
    (extra,) = set(names) - set(PAIRWISE_LOSSES) - set(LISTWISE_LOSSES)
    assert extra in ("ranklist[approx=exact]", "ranklist[approx=lse]")
    for row in rows:
        assert row["device"] == "cpu"
        for key in ("loss_time_s", "naive_time_s", "logsigmoid_time_s", "speedup_vs_naive", "ratio_vs_logsigmoid"):
            assert row[key] > 0, (row["loss"], key)
        assert isinstance(row["pass"], bool)
        assert row["naive_measured_on"].startswith(f"first {row['naive_n']} of 64")
        # Context timings: the pair-logsigmoid baseline on every ranklist row (both approx forms compare every pair),
        # a sort alone on plackett_luce; None elsewhere. Context only: the verdict ignores them.
        pair_keys = ("pair_logsigmoid_time_s", "ratio_vs_pair_logsigmoid")
        sort_keys = ("sort_time_s", "sort_ratio_vs_logsigmoid")
        for keys, applies in (
            (pair_keys, row["loss"].startswith("ranklist")),
            (sort_keys, row["loss"] == "plackett_luce"),
        ):
            for key in keys:
                assert (row[key] > 0) if applies else (row[key] is None), (row["loss"], key, row[key])
        assert row["pass"] == (row["pass_speedup_vs_naive"] and row["pass_ratio_vs_logsigmoid"])
    assert sum(r["loss"].startswith("ranklist") for r in rows) == 2
    for key in ("platform", "processor", "cpu_count", "torch", "devices", "date", "torch_num_threads"):
        assert result["machine"][key], key

    markdown = (tmp_path / "bench_losses.md").read_text()
    assert all(f"| {row['label']} |" in markdown for row in rows)
    assert "context (not a criterion)" in markdown
    assert markdown.count("| pairs: ") == 2 and markdown.count("| sort alone: ") == 1
    assert markdown in capsys.readouterr().out
