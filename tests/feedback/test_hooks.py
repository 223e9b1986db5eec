from __future__ import annotations

import numpy as np
import torch

from mmpref.cli import main
from mmpref.feedback.hooks import HumanTeacher, LabelFeed, records_for_annotator
from mmpref.vision.taste.model import CodePrior, PersonalTasteModel, save_taste_model


def test_human_teacher_asks_collects_and_counts(store, images):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    teacher = HumanTeacher(store)
    task_ids = teacher.ask([("seg-pair-7", images[0], images[1]), ("seg-pair-8", images[2], images[3])])
    assert teacher.collect() == {} and teacher.outstanding == 2
    store.add_label(ann, task_ids[0], {"choice": 1}, "uuid-teach-1")
    store.add_label(ann, task_ids[1], {"choice": "tie"}, "uuid-teach-2")
    store.add_label(ann, 1, {"choice": 0}, "uuid-other-1")  # not this teacher's task: ignored
    assert teacher.collect() == {"seg-pair-7": 0.0, "seg-pair-8": 0.5}
    assert (teacher.budget.asked, teacher.budget.obtained, teacher.budget.ties) == (2, 2, 1)
    assert store.task(task_ids[0]).source == "pbrl:seg-pair-7"


def test_feed_reads_labels_as_they_arrive(store):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    feed = LabelFeed(store)
    assert feed.poll() == []
    store.add_label(ann, 1, {"choice": 0}, "uuid-feed-1")
    assert [lb.task_id for lb in feed.poll()] == [1]
    store.add_label(ann, 2, {"choice": 1}, "uuid-feed-2")
    assert [lb.task_id for lb in feed.poll()] == [2] and feed.poll() == []


def test_enrollment_flow_from_the_store(store, tmp_path, capsys):
    ann = store.annotator_for_token(store.add_annotator("ann", "token-ann-123"))[0]
    store.add_label(ann, 1, {"choice": 0}, "uuid-enroll-1")
    store.add_label(ann, 4, {"rating": 5}, "uuid-enroll-2")
    assert len(records_for_annotator(store, "ann")) == 2
    torch.manual_seed(0)
    model_dir = save_taste_model(
        PersonalTasteModel(1280, 2, rank=2, hidden=8).eval(),
        CodePrior(np.zeros(2), np.eye(2)),
        "efficientnet-lite0-imagenet",
        tmp_path / "m",
    )
    assert (
        main(["enroll", "--store", store.url.removeprefix("sqlite:///"), "--model", str(model_dir), "--user", "ann"])
        == 0
    )
    assert "enrolled 'ann' from 1 comparisons" in capsys.readouterr().out
    assert (model_dir / "users" / "ann.json").is_file()
