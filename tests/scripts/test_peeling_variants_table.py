"""scripts/peeling_variants_table.py: one row per variant report, flags against the reference, figures recomputed."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

SCRIPT_PATH = Path(__file__).resolve().parents[2] / "scripts" / "peeling_variants_table.py"


def _report(path: Path, seeds: list[int], bc: list[int], ft: list[int], **args) -> Path:
    def evaluation(goals: list[int]) -> dict:
        return {"success": sum(goals) / len(goals), "progress": 0.5, "jerk": 0.1, "goal_success": goals}

    results = [
        {"seed": s, "task": "push-v3", "bc_mean": evaluation(bc), "ft_mean": evaluation(ft)}
        | {"bc_sample": evaluation(bc), "ft_sample": evaluation(ft)}
        for s in seeds
    ]
    meta = {"args": {"task": "push-v3", "seeds": seeds, "eval_episodes": len(bc), "beta": 0.1} | args}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results}))
    return path


def test_one_row_per_variant_with_its_differing_flags(tmp_path, monkeypatch):
    reference = _report(tmp_path / "bench_peeling_cpu.json", [0, 1, 2], [0, 0, 1, 1], [1, 1, 1, 1])
    folder = tmp_path / "variants"
    _report(folder / "bench_peeling_beta03_cpu.json", [0, 1], [0, 0, 1, 1], [0, 1, 1, 1], beta=0.3)
    out = tmp_path / "table.md"
    argv = ["x", "--dir", str(folder), "--reference", str(reference), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT_PATH), run_name="__main__")
    rows = [line for line in out.read_text().splitlines() if line.startswith("| [")]
    assert len(rows) == 2
    assert "bench_peeling_cpu" in rows[0] and "**+50.0 ± " in rows[0] and "0.500 → 1.000" in rows[0]
    assert "`--beta 0.3`" in rows[1] and "**+25.0 ± " in rows[1] and "| 0-1 |" in rows[1]
    assert "`--beta" not in rows[0]  # the reference differs from itself in nothing
