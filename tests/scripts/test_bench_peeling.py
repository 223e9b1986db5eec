from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

# scripts/ is not a package: load the file itself.
SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "bench_peeling.py"))


def _evaluation(goals: list[int]) -> dict:
    return {"success": sum(goals) / len(goals), "progress": 0.5, "jerk": 0.1, "goal_success": goals}


def _run(path: Path, seeds: list[int], bc: list[int], ft: list[int], **args) -> Path:
    results = [
        {
            "seed": s,
            "demo_success": 0.7,
            "reward_pair_accuracy": 0.8,
            "bc_sample": _evaluation(bc),
            "ft_sample": _evaluation(ft),
            "bc_tempered_sample": _evaluation(bc),
            "bc_mean": _evaluation(bc),
            "ft_mean": _evaluation(ft),
            "reference_unchanged": True,
            "finetune_log": {"success": [0.5], "validation": [1.0, 1.2], "kept_round": 1},
            "timings": {"finetune_s": 1.0},
        }
        for s in seeds
    ]
    meta = {
        "date": "today",
        "command": f"run {seeds}",
        "machine": "test",
        "args": {"seeds": seeds, "eval_episodes": len(bc), "explore_temperature": 0.5, "windows": 5} | args,
    }
    path.write_text(json.dumps({"meta": meta, "results": results}))
    return path


def test_intervals_by_hand():
    # unpaired Wald: 1.96 √((0.5·0.5 + 0.9·0.1) / 100)
    assert SCRIPT["difference_interval"](0.5, 0.9, 100) == pytest.approx(1.96 * math.sqrt(0.34 / 100))
    # paired: per-goal differences [1, 0, 0, 1, -1, 0] (after − before, seed by seed), their sample sd by hand
    diffs = [1, 0, 0, 1, -1, 0]
    mean = sum(diffs) / 6
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 5)
    got = SCRIPT["paired_interval"]([[0, 1, 0], [0, 1, 1]], [[1, 1, 0], [1, 0, 1]])
    assert got == pytest.approx(1.96 * sd / math.sqrt(6))


def test_merge_pools_the_seeds_of_one_setting_and_refuses_others(tmp_path):
    a = _run(tmp_path / "a.json", [0, 1], [0, 0, 1, 1], [1, 1, 1, 0])
    b = _run(tmp_path / "b.json", [2], [0, 1, 1, 1], [1, 1, 1, 1], workers=3)  # workers do not change results
    SCRIPT["merge_reports"]([a, b], tmp_path / "out")
    merged = json.loads((tmp_path / "out" / "bench_peeling_cpu.json").read_text())
    assert [r["seed"] for r in merged["results"]] == [0, 1, 2]
    report = (tmp_path / "out" / "bench_peeling_cpu.md").read_text()
    # mean success BC (0.5 + 0.5 + 0.75) / 3 → finetuned (0.75 + 0.75 + 1) / 3, paired over 12 goals
    assert "mean, success: BC 0.583 → BC + DPO 0.833 (+25.0 ±" in report and "12 goals, paired" in report
    assert "12 goals, paired; headroom to every goal solved +41.7, 60 % of it won)" in report  # 25.0 / 41.7
    assert "Held-out success" not in report  # no run tracked its rounds
    tracked = json.loads(b.read_text())
    validation = [{"fused": [1.0, 0.0], "progress": [0.5, 0.5]}, {"fused": [2.0, 0.0], "progress": [0.4, 0.4]}]
    held_out = [{"success": 0.5}, {"success": 0.75}]
    tracked["results"][0]["rounds"] = {"held_out": held_out, "validation": validation}
    tracked["meta"]["args"]["track_rounds"] = True  # tracking does not change results: it merges with the others
    b.write_text(json.dumps(tracked))
    SCRIPT["merge_reports"]([a, b], tmp_path / "out")
    report = (tmp_path / "out" / "bench_peeling_cpu.md").read_text()
    assert "- seed 2: 0.50 [0.75]" in report  # kept round 1 in brackets
    assert "| final progress (task metric), 2 validation goals | 0.500 (+0.0) |" in report  # keeps BC
    other = _run(tmp_path / "c.json", [3], [0, 1, 0, 1], [1, 1, 0, 1], windows=1)
    with pytest.raises(SystemExit, match="windows"):
        SCRIPT["merge_reports"]([a, other], tmp_path / "out")
    with pytest.raises(SystemExit, match="repeat"):
        SCRIPT["merge_reports"]([a, a], tmp_path / "out")
    # a run that records a later flag at its default merges with one from before the flag existed; not otherwise
    newer = _run(tmp_path / "d.json", [4], [0, 1, 0, 1], [1, 1, 0, 1], log_floor=0.0, lr_decay=1.0)
    SCRIPT["merge_reports"]([a, newer], tmp_path / "out")
    logged = _run(tmp_path / "e.json", [5], [0, 1, 0, 1], [1, 1, 0, 1], log_floor=0.02)
    with pytest.raises(SystemExit, match="log_floor"):
        SCRIPT["merge_reports"]([a, logged], tmp_path / "out")
    distinct = json.loads(newer.read_text())  # evaluated on distinct goals (it records its draws)
    distinct["results"][0]["ft_mean"]["draws"] = 5
    newer.write_text(json.dumps(distinct))
    with pytest.raises(SystemExit, match="one evaluation"):
        SCRIPT["merge_reports"]([a, newer], tmp_path / "out")


def test_command_line_reruns_the_same_settings():
    """The recorded command parses back to the same arguments, a switched-off default switch included."""
    parser = SCRIPT["build_parser"]()
    args = parser.parse_args(["--seeds", "3", "4", "--no-censored", "--select-best", "--window-credit", "own"])
    command = SCRIPT["command_line"](parser, args)
    assert "--no-censored" in command and "--select-best" in command and "--oracle" not in command
    again = parser.parse_args(command.split("bench_peeling.py ", 1)[1].split())
    assert vars(again) == vars(args)
    defaults = parser.parse_args([])
    assert defaults.censored and defaults.window_credit == "to_go" and defaults.noise_correlation == 0.97


def test_round_choices_by_hand():
    """Three rounds, four validation goals, the run chose on the first two: each rule's argmax worked out by hand."""
    record = {
        "validation": [
            {"fused": [1, 1, 0, 0], "progress": [0.5, 0.5, 0.5, 0.5]},  # means: first two 1.0, all 0.5, progress 0.5
            {"fused": [0, 0, 3, 3], "progress": [0.9, 0.9, 0.9, 0.9]},  # 0.0, 1.5, 0.9
            {"fused": [2, 2, 0, 0], "progress": [0.1, 0.1, 0.1, 0.1]},  # 2.0, 1.0, 0.1
        ],
        "held_out": [{"success": 0.2}, {"success": 0.7}, {"success": 0.4}],
    }
    choices = SCRIPT["round_choices"](record, 2, used=2)
    assert list(choices.values()) == [2, 1, 1, 2, 1]
    assert "(the run's rule)" in next(iter(choices))
    # cut at round 1: the last round is 1, the run's rule keeps round 0 (1.0 > 0.0)
    assert list(SCRIPT["round_choices"](record, 1, used=2).values()) == [0, 1, 1, 1, 1]
    lines = SCRIPT["round_choice_lines"]([{"rounds": record}], used=2)
    # with 2 rounds, one column cut at round 2: the run's rule keeps round 2 (0.4), BC 0.2 → +20.0 points
    assert "| fused reward, 2 validation goals (the run's rule) | 0.400 (+20.0) |" in lines


def test_best_of_keeps_per_seed_the_restart_the_validation_goals_score_best(tmp_path):
    """Restart 0 (a plain run) and restart 1 (--first-restart 1): seed 0 keeps restart 0 (1.2 > 1.1), seed 1
    restart 1 (1.5 > 1.2), each with the held-out results of the run that trained it; seed 2, in one run only, is
    left out."""
    bc = [0, 0, 1, 1]
    plain = _run(tmp_path / "a.json", [0, 1, 2], bc, [1, 0, 1, 1])
    later = json.loads(_run(tmp_path / "b.json", [0, 1], bc, [1, 1, 1, 1], first_restart=1).read_text())
    later["results"][0]["finetune_log"] = {"success": [0.5], "validation": [1.0, 1.1, 0.9], "kept_round": 1}
    later["results"][1]["finetune_log"] = {"success": [0.5], "validation": [1.0, 0.7, 1.5], "kept_round": 2}
    (tmp_path / "b.json").write_text(json.dumps(later))
    SCRIPT["best_of_reports"]([plain, tmp_path / "b.json"], tmp_path / "out")
    best = json.loads((tmp_path / "out" / "bench_peeling_cpu.json").read_text())
    assert [r["seed"] for r in best["results"]] == [0, 1]
    assert [r["restart_kept"] for r in best["results"]] == [0, 1]
    assert [r["ft_mean"]["goal_success"] for r in best["results"]] == [[1, 0, 1, 1], [1, 1, 1, 1]]
    assert [s["validation"] for s in best["results"][1]["restarts"]] == [1.2, 1.5]
    assert best["meta"]["args"]["restarts"] == 2
    report = (tmp_path / "out" / "bench_peeling_cpu.md").read_text()
    assert "- seed 0: [0: 1.200] 1: 1.100" in report and "- seed 1: 0: 1.200 [1: 1.500]" in report
    # finetuned (0.75 + 1) / 2 over BC 0.5
    assert "mean, success: BC 0.500 → BC + DPO 0.875 (+37.5 ±" in report
    with pytest.raises(SystemExit, match="repeat"):  # restart 0 twice
        SCRIPT["best_of_reports"]([plain, plain], tmp_path / "out")
    other = _run(tmp_path / "c.json", [0], bc, [1, 1, 1, 1], first_restart=1, windows=1)
    with pytest.raises(SystemExit, match="windows"):
        SCRIPT["best_of_reports"]([plain, other], tmp_path / "out")
    moved = _run(tmp_path / "d.json", [0], [1, 1, 1, 1], [1, 1, 1, 1], first_restart=1)  # another BC
    with pytest.raises(SystemExit, match="stage 1"):
        SCRIPT["best_of_reports"]([plain, moved], tmp_path / "out")


def test_best_of_chooses_on_the_restart_validation_scores_where_the_runs_hold_them(tmp_path):
    """Runs with --restart-validation record each restart's choice score: seed 0 keeps restart 1 on it (0.9 > 0.8)
    although its kept round scored lower on the round's goals (1.1 < 1.2); runs without the flag do not mix in."""
    bc = [0, 0, 1, 1]

    def with_choice(path: Path, restart: int, ft: list[int], validation: float, choice: float) -> Path:
        run = json.loads(_run(path, [0], bc, ft, first_restart=restart, restart_validation=32).read_text())
        summary = {"restart": restart, "seed": restart, "kept_round": 1, "validation": validation, "choice": choice}
        run["results"][0] |= {"restarts": [summary], "restart_kept": restart}
        path.write_text(json.dumps(run))
        return path

    first = with_choice(tmp_path / "a.json", 0, [1, 0, 1, 1], validation=1.2, choice=0.8)
    second = with_choice(tmp_path / "b.json", 1, [1, 1, 1, 1], validation=1.1, choice=0.9)
    SCRIPT["best_of_reports"]([first, second], tmp_path / "out")
    best = json.loads((tmp_path / "out" / "bench_peeling_cpu.json").read_text())
    assert best["results"][0]["restart_kept"] == 1
    assert best["results"][0]["ft_mean"]["goal_success"] == [1, 1, 1, 1]
    report = (tmp_path / "out" / "bench_peeling_cpu.md").read_text()
    assert "- seed 0: 0: 1.200 / 0.800 [1: 1.100 / 0.900]" in report
    plain = _run(tmp_path / "c.json", [0], bc, [1, 1, 1, 1], first_restart=2)
    with pytest.raises(SystemExit, match="restart_validation"):
        SCRIPT["best_of_reports"]([first, plain], tmp_path / "out")


def test_restart_choice_table_by_hand():
    """Two seeds of two goals, two restarts each, every restart's held-out record kept (diagnosis)."""

    def restart(validation: float, choice: float, goals: list[int]) -> dict:
        held_out = {"success": sum(goals) / len(goals), "goal_success": goals}
        return {"validation": validation, "choice": choice, "held_out_mean": held_out}

    results = [
        {"bc_mean": _evaluation([0, 0]), "restarts": [restart(1.0, 0.5, [1, 0]), restart(0.9, 0.6, [1, 1])]},
        {"bc_mean": _evaluation([0, 1]), "restarts": [restart(1.0, 0.5, [0, 1]), restart(1.1, 0.6, [1, 1])]},
    ]
    lines = SCRIPT["restart_choice_lines"](results)
    # BC 1/4; the validation rule keeps restart 0 then 1: goals 1 0 | 1 1, changes 1 0 1 0 (mean 0.5, sd sqrt(1/3))
    half = 1.96 * math.sqrt(1 / 3) / 2
    assert f"| kept by its kept round's score on the validation goals | 0.750 | +50.0 ± {100 * half:.1f} |" in lines
    assert any(line.startswith("| restart 0 alone | 0.500 | +25.0 ±") for line in lines)
    assert any(line.startswith("| restart 1 alone | 1.000 | +75.0 ±") for line in lines)
    assert any(line.startswith("| kept by its score on the `--restart-validation` goals | 1.000 |") for line in lines)
    assert any(line.startswith("| best in hindsight") and "| 1.000 |" in line for line in lines)
    # the choice rule keeps 1 1 | 1 1 against the validation rule's 1 0 | 1 1: one goal won
    assert any(
        line.startswith("Choosing on the `--restart-validation` goals against")
        and "+25.0 ±" in line
        and "(1 goals won, 0 lost)" in line
        for line in lines
    )
    assert lines[1].startswith("Choosing the restart (2 seeds; ")
    # a seed without the record (an older run) is left out, and the heading names the seeds pooled
    results[0]["seed"], results[1]["seed"] = 3, 7
    del results[0]["restarts"][1]["held_out_mean"]
    lines = SCRIPT["restart_choice_lines"](results)
    assert lines[1].startswith("Choosing the restart (1 seeds: 7; ") and "BC 0.500" in lines[1]
    assert any(line.startswith("| restart 0 alone | 0.500 | +0.0 ±") for line in lines)
    assert any(line.startswith("| restart 1 alone | 1.000 | +50.0 ±") for line in lines)
    del results[1]["restarts"][0]["held_out_mean"]  # no seed with the record: no table
    assert SCRIPT["restart_choice_lines"](results) == []
