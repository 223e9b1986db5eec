"""A reduced load + SIGKILL test in the default suite (the full 20 × 200 run is scripts/load_test_labels.py)."""

from __future__ import annotations

from mmpref.feedback.loadtest import run_load_test


def test_no_acknowledged_label_is_lost_or_duplicated_across_a_sigkill(tmp_path):
    result = run_load_test(tmp_path, annotators=6, labels_each=30, kill=True, time_limit_s=240)
    print(result)
    assert result["errors"] == []
    assert result["acknowledged"] == 6 * 30
    assert result["killed_after_acknowledged"] is not None and 0 < result["killed_after_acknowledged"] < 180
    assert result["acknowledged_missing"] == 0
    assert result["stored_twice"] == 0 and result["task_labelled_twice_by_one_annotator"] == 0
    assert result["stored"] == 6 * 30
