from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

# scripts/ is not a package: load the file itself.
SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "bench_pbrl.py"))


def _loop_rounds(total: int, start: int, every: int, unsupervised: int) -> list[int]:
    """The rounds the loop itself holds before ``total``: its feedback rule, after the unsupervised phase."""
    from mmpref.control.pbrl.loop import PbRLLoop

    fake = SimpleNamespace(config=SimpleNamespace(feedback_start=start, feedback_every=every))
    return [s for s in range(1, total) if s >= unsupervised and PbRLLoop._is_feedback_step(fake, s)]


@pytest.mark.parametrize(
    ("total", "start", "every", "unsupervised"),
    [(30_000, 1000, 2000, 0), (30_000, 1000, 2000, 1000), (30_000, 1000, 2000, 4000), (20_000, 0, 2000, 0)],
)
def test_feedback_steps_match_the_loop(total: int, start: int, every: int, unsupervised: int) -> None:
    expected = _loop_rounds(total, start, every, unsupervised)
    assert SCRIPT["feedback_steps"](total, start, every, unsupervised) == expected


def _args(**over) -> argparse.Namespace:
    base = {
        "tasks": ["button-press-v3"],
        "seeds": [0],
        "steps": 30_000,
        "variants": ["pebble"],
        "label_settings": ["efficient", "noisy"],
        "noisy_variants": ["rime", "pebble"],
        "baselines": ["sac", "random"],
        "efficient_labels": 500,
        "max_labels": 2000,
        "noise_eps": 0.2,
        "list_size": 4,
        "feedback_start": 1000,
        "feedback_every": 2000,
        "unsupervised_steps": 4000,
        "queries_per_round": None,
    }
    return argparse.Namespace(**(base | over))


def test_budget_is_spent_over_the_rounds_held_after_pretraining() -> None:
    args = _args()
    jobs = SCRIPT["build_jobs"](args, {"total_steps": args.steps})
    assert [(j["method"], j.get("variant"), j.get("setting")) for j in jobs] == [
        ("sac", None, None),
        ("random", None, None),
        ("pbrl", "pebble", "efficient"),
        ("pbrl", "rime", "noisy"),
        ("pbrl", "pebble", "noisy"),
    ]
    rounds = len(_loop_rounds(args.steps, args.feedback_start, args.feedback_every, args.unsupervised_steps))
    assert rounds == 13  # steps 5,000 ... 29,000: the rounds at 1,000 and 3,000 fall in the pre-training
    for job in jobs[2:]:
        per_round, budget = job["config"]["queries_per_round"], job["config"]["max_labels"]
        assert per_round * rounds >= budget > per_round * (rounds - 1)  # every label asked, none left unspent
    assert jobs[3]["config"]["teacher_eps"] == 0.2 and jobs[2]["config"]["teacher_eps"] == 0.0


def _result(method: str, curve: list[float], returns: list[float], variant: str | None = None) -> dict:
    history = [
        {"steps": 2500 * (i + 1), "success_rate": s, "labels": 0, "train_true_return": r}
        for i, (s, r) in enumerate(zip(curve, returns, strict=True))
    ]
    result = {"method": method, "task": "button-press-v3", "seed": 0, "history": history, "wall_s": 10.0}
    result |= {"cpu_s": 8.0, "steps_per_cpu_s": 50.0, "labels": 500 if variant else 0}
    result |= {"cpu_by_part_s": {"evaluate": 1.0, "feedback_round": 0.5 if variant else 0.0, "relabel": 0.0}}
    return result | ({"variant": variant, "setting": "efficient"} if variant else {})


def test_report_gives_ratios_and_the_training_return(tmp_path: Path) -> None:
    results = [
        _result("sac", [0.0, 1.0, 1.0, 1.0], [10, 300, 900, 1200]),
        _result("pbrl", [0.0, 0.0, 1.0, 0.0], [10, 200, 700, 1100], variant="pebble"),
    ]
    meta = {
        "machine": "test",
        "steps": 10_000,
        "seeds": [0],
        "label_settings": {"efficient": 500},
        "raw_steps_per_s": {},
        "settings": {},
        "noise_eps": 0.2,
    }
    SCRIPT["write_report"](results, meta, tmp_path)
    text = (tmp_path / "bench_pbrl.md").read_text()
    # PEBBLE: final 0 of SAC's 1 -> 0.00; last three 1/3 of SAC's 1 -> 0.33
    assert "| button-press-v3 | PEBBLE, efficient | [0.0] | 0.33 | 0.00 | 0.33 | [500] |" in text
    assert "| button-press-v3 | 0 | SAC (true reward) | 10 300 900 1200 |" in text
    assert json.loads((tmp_path / "bench_pbrl.json").read_text())["results"][1]["variant"] == "pebble"
    assert (tmp_path / "bench_pbrl.png").stat().st_size > 0


def test_report_gives_the_evaluation_return_and_rimes_selection(tmp_path: Path) -> None:
    rime = _result("pbrl", [0.0, 0.3], [10, 200], variant="rime")
    for row, value in zip(rime["history"], [120.0, 845.6], strict=True):
        row["eval_return"] = value
    record = {"labelled": 100.0, "trusted": 80.0, "flipped": 5.0, "dropped": 15.0, "tau_lower": 2.5, "rho": 0.4}
    record |= {"corrupted": 20.0, "trusted_corrupted": 6.0, "dropped_corrupted": 10.0, "flipped_correct": 4.0}
    # the first record comes from before selections per epoch (no count: one), the second from 7 selections
    rime["rime_log"] = [
        record | {"step": 1000.0, "tau_lower": float("inf")},
        record | {"step": 3000.0, "selections": 7.0},
    ]
    old = _result("sac", [0.0, 1.0], [10, 300])  # a result written before eval_return existed still reports
    meta = {"machine": "test", "steps": 5000, "seeds": [0], "label_settings": {}, "raw_steps_per_s": {}}
    SCRIPT["write_report"]([rime, old], meta | {"settings": {"eval_episodes": 10}, "noise_eps": 0.2}, tmp_path)
    text = (tmp_path / "bench_pbrl.md").read_text()
    assert "over 10 evaluation episodes, each on a different goal" in text
    assert "| button-press-v3 | 0 | +RIME, efficient | 120 846 |" in text
    assert (
        "| SAC (true reward) | 10 300 |" in text and "SAC (true reward) | nan" not in text
    )  # no eval_return: skipped
    # summed over the two updates: 40 corrupted, 28 caught (20 dropped + 8 flipped back), 8 of 10 flips right,
    # 20 of 30 dropped pairs corrupted; the last update's threshold
    row = "| button-press-v3 | 0 | +RIME, efficient | 2 | 8 | 200 | 160 | 10 | 30 | 40 | 70% | 80% | 67% | 2.50 "
    assert row + "| 0.400 |" in text


def test_resume_keeps_finished_runs_of_the_same_settings_only(tmp_path: Path) -> None:
    args = _args()
    jobs = SCRIPT["build_jobs"](args, {"total_steps": args.steps})
    done_and_left = SCRIPT["done_and_left"]
    path = tmp_path / "bench_pbrl.json"
    assert done_and_left(path, jobs) == ([], jobs)  # no file yet: everything is left
    finished = [jobs[0] | {"history": [], "wall_s": 1.0}, jobs[3] | {"history": [], "wall_s": 2.0}]
    stale = jobs[2] | {"config": jobs[2]["config"] | {"max_labels": 999}, "history": []}  # other settings
    path.write_text(json.dumps({"meta": {}, "results": [*finished, stale]}))
    done, left = done_and_left(path, jobs)
    assert [r["wall_s"] for r in done] == [1.0, 2.0]
    assert left == [jobs[1], jobs[2], jobs[4]]


def test_goals_pick_the_best_label_efficient_configuration_and_cost_each_variant() -> None:
    sac = _result("sac", [0.0, 0.5], [10, 300]) | {"steps_per_cpu_s": 100.0}
    pebble = _result("pbrl", [0.0, 0.3], [10, 200], variant="pebble") | {"steps_per_cpu_s": 90.0}
    surf = _result("pbrl", [0.0, 0.45], [10, 200], variant="surf") | {"steps_per_cpu_s": 80.0}
    noisy = _result("pbrl", [0.0, 0.9], [10, 200], variant="rime") | {"setting": "noisy"}  # not label-efficient
    results = [sac, pebble, surf, noisy]
    text = "\n".join(SCRIPT["goal_lines"](SCRIPT["summarise"](results)))
    # the best of the two efficient rows is SURF: 0.45 / 0.5 = 0.90 >= 0.80; the noisy RIME run is not a candidate
    assert "best of 2: +SURF, efficient, mean final 0.45 vs SAC 0.50 over 1 seeds | 0.90 of SAC | met" in text
    assert "speed: PEBBLE, efficient | 90.0 vs SAC 100.0 steps/CPU-s | costs 10.0% | met" in text
    assert "speed: +SURF, efficient | 80.0 vs SAC 100.0 steps/CPU-s | costs 20.0% | missed" in text
    assert SCRIPT["goal_lines"](SCRIPT["summarise"]([sac])) == []  # no PbRL run: no goals
    zero = _result("sac", [0.0, 0.0], [10, 300])
    text = "\n".join(SCRIPT["goal_lines"](SCRIPT["summarise"]([zero, surf])))
    assert "undefined (SAC at 0)" in text
