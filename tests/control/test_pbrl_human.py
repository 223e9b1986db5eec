"""People in the PbRL loop (``--teacher human``): clips of queried segments, pair tasks in the app, answers over HTTP.

The annotator here is a script that uses only the app's HTTP API (``/api/next``, ``/media/{id}``, ``/api/labels``)
on a real server; it prefers the segment with the higher true return, which it reads from the teacher's record of
what it asked (knowledge only a test has).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")
pytest.importorskip("sqlalchemy")
uvicorn = pytest.importorskip("uvicorn")

from mmpref.cli import main  # noqa: E402
from mmpref.control.envs import make_env  # noqa: E402
from mmpref.control.pbrl.clips import CAMERA, CLIP_HEIGHT, CLIP_WIDTH, ClipRenderer, SimRecorder  # noqa: E402
from mmpref.control.pbrl.env import PreferenceEnv, RewardSource  # noqa: E402
from mmpref.control.pbrl.human import HumanPairTeacher  # noqa: E402
from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop  # noqa: E402
from mmpref.control.segments import cut_segments, random_pairs  # noqa: E402
from mmpref.feedback.loadtest import app_in_thread  # noqa: E402
from mmpref.feedback.store import LabelStore  # noqa: E402

TOKEN = "token-annotator-1"


@pytest.fixture
def store(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.add_annotator("ann", TOKEN)
    return store


@pytest.fixture
def server(store):
    with app_in_thread(store) as url:
        yield url


def http(url: str, body: dict | None = None) -> tuple[str, bytes]:
    """(content type, body) of a GET, or of a POST of ``body`` as JSON, with the annotator's token."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", f"Bearer {TOKEN}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers.get("content-type", ""), response.read()


class ScriptedAnnotator(threading.Thread):
    """Labels every task the app serves, over HTTP: the segment with the higher true return wins.

    Args:
        base: the app's URL.
        asked: the teacher's {task id: the segment pair it shows} (how the test knows the true returns).
        answer_only: answer at most this many tasks, then stop answering (``None``: all).
    """

    def __init__(self, base: str, asked: dict, answer_only: int | None = None):
        super().__init__(daemon=True)
        self.base, self.asked, self.answer_only = base, asked, answer_only
        self.stop, self.answers, self.media = threading.Event(), {}, []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.answer_only is not None and len(self.answers) >= self.answer_only:
                    return
                nxt = json.loads(http(f"{self.base}/api/next")[1])
                if nxt["done"]:
                    time.sleep(0.05)
                    continue
                task = nxt["task"]
                for _ in range(200):  # the teacher records a task just after the store returns its id
                    if task["id"] in self.asked:
                        break
                    time.sleep(0.01)
                self.media += [http(f"{self.base}{m['url']}") for m in task["media"]]
                pair = self.asked[task["id"]]
                r_a, r_b = float(pair.a.rewards.sum()), float(pair.b.rewards.sum())
                choice = 0 if r_a > r_b else 1 if r_b > r_a else "tie"
                body = {"task_id": task["id"], "label_uuid": uuid.uuid4().hex, "answer": {"choice": choice}}
                assert json.loads(http(f"{self.base}/api/labels", body)[1])["created"]
                self.answers[task["id"]] = choice
        except BaseException as err:  # surfaced by the test
            self.error = err


TINY = dict(
    task="reach-v3",
    total_steps=400,
    learning_starts=100,
    feedback_every=200,
    queries_per_round=4,
    max_labels=8,
    segment_length=10,
    ensemble_size=2,
    reward_hidden=32,
    reward_layers=2,
    reward_updates=200,
    reward_batch_size=8,
    eval_every=400,
    eval_episodes=1,
    sac_kwargs={"batch_size": 32, "policy_kwargs": {"net_arch": [32, 32]}},
    device="cpu",
    teacher="human",
    human_poll_s=0.05,
    human_timeout_s=120.0,
)


def interrupt(seconds: float) -> None:
    raise KeyboardInterrupt  # a Ctrl-C while the loop waits for people


def test_loop_learns_from_answers_given_in_the_app_over_http(store, server, tmp_path):
    loop = PbRLLoop(PbRLConfig(db=str(store.path), **TINY), progress=False)
    untrained = copy.deepcopy(loop.ensemble.state_dict())
    # nobody answers yet and the user stops the run while round 1 (at step 200) waits: its 4 tasks stay queued
    loop.teacher.wait = interrupt
    with pytest.raises(KeyboardInterrupt):
        loop.run(checkpoint=tmp_path / "run")
    assert store.progress(1)["total"] == 4 and store.labels() == []
    del loop
    loop = PbRLLoop.load(tmp_path / "run", progress=False)  # `mmpref pbrl --resume`: at the round, not before
    assert loop.steps == 200 and loop.round_due and loop.teacher.budget.asked == 0
    annotator = ScriptedAnnotator(server, loop.teacher.asked)
    annotator.start()
    try:
        history = loop.run(checkpoint=tmp_path / "run")
    finally:
        annotator.stop.set()
        annotator.join(timeout=10)
    assert annotator.error is None, annotator.error
    # the loop finished, with 2 rounds × 4 queries answered in the app
    assert loop.steps == 400 and history[-1]["steps"] == 400
    assert len(loop.labelled) == 8 and history[-1]["labels"] == 8 and loop.teacher.budget.skipped == 0
    # every query was a pair task of two MP4 clips, served by the app
    assert len(annotator.media) == 16 and store.progress(1)["total"] == 8  # round 1's tasks were found, not re-posted
    assert all(kind == "video/mp4" and data[4:8] == b"ftyp" for kind, data in annotator.media)
    assert sorted(t.source.split(":")[0] for t in map(store.task, annotator.answers)) == ["pbrl"] * 8
    clips = sorted((tmp_path / "labels_clips").glob("segment-*.mp4"))
    assert 2 <= len(clips) <= 16  # a segment shown in several pairs is rendered once
    # the labels the loop trained on are the annotator's answers, in the teacher's convention (left = a)
    asked = loop.teacher.asked
    by_pair = {(id(asked[t].a), id(asked[t].b)): choice for t, choice in annotator.answers.items()}
    for pair in loop.labelled:
        choice = by_pair[id(pair.a), id(pair.b)]
        assert pair.label == {0: 1.0, 1: 0.0, "tie": 0.5}[choice] and pair.teacher.startswith("human:")
    # the reward model was fitted on them: weights moved, and it now orders the labelled pairs as the person did
    trained = loop.ensemble.state_dict()["system"]
    assert any(not torch.equal(trained[k], untrained["system"][k]) for k in trained)
    decided = [p for p in loop.labelled if p.label != 0.5]
    wanted = np.array([p.label == 1.0 for p in decided])
    agreement = float(((loop.ensemble.pair_probabilities(decided).mean(0) > 0.5) == wanted).mean())
    loop.ensemble.load_state_dict(untrained)
    before = float(((loop.ensemble.pair_probabilities(decided).mean(0) > 0.5) == wanted).mean())
    print(f"reward model agrees with {agreement:.2f} of the {len(decided)} answered pairs (untrained: {before:.2f})")
    assert agreement >= 0.85


@pytest.fixture
def recorded():
    """A recorded 40-step episode of reach-v3 (random actions) and the frames a camera saw live, before each step."""
    base = make_env(
        "reach-v3", seed=3, render_mode="rgb_array", width=CLIP_WIDTH, height=CLIP_HEIGHT, camera_name=CAMERA
    )
    env = PreferenceEnv(base, RewardSource("true"))
    env.recorder = SimRecorder()
    env.reset(seed=3)
    rng, live = np.random.default_rng(0), []
    for _ in range(40):
        live.append(np.asarray(base.render()).copy())
        env.step(rng.uniform(-1, 1, 4).astype(np.float32))
    yield env.recent_episodes(), live
    base.close()


def test_clips_rerender_exactly_what_the_camera_saw(recorded, tmp_path):
    episodes, live = recorded
    renderer = ClipRenderer("reach-v3", tmp_path, every=1, seed=99)  # another seed: the scene comes from the record
    frames, turned = renderer.frames(episodes[0], 12, 10), renderer.upside_down()
    renderer.close()
    assert turned  # Meta-World's corner camera looks at the table upside down: clips are turned 180° for people
    assert len(frames) == 10 and episodes[0].states.shape == (40, 38)
    for got, want in zip(frames, [f[::-1, ::-1] for f in live[12:22]], strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2  # same pixels (EGL may round differently)
    assert not np.array_equal(frames[0], frames[-1])  # the arm moved: not one frame repeated


def test_timeout_drops_unanswered_and_a_resumed_round_reuses_tasks_and_answers(recorded, store, server, tmp_path):
    episodes, _ = recorded
    pairs = random_pairs(cut_segments(episodes, 8, stride=4), 4, np.random.default_rng(1))

    def teacher() -> HumanPairTeacher:
        renderer = ClipRenderer("reach-v3", tmp_path / "clips", fps=10, every=2)
        return HumanPairTeacher(store, lambda: episodes, renderer, "reach-v3", 8, "which?", 1.0, 0.05, False)

    first = teacher()
    annotator = ScriptedAnnotator(server, first.asked, answer_only=2)
    annotator.start()
    labelled = first.label_pairs(pairs)  # two answered, two dropped after the 1 s timeout
    annotator.join(timeout=10)
    assert annotator.error is None, annotator.error
    assert len(labelled) == 2 and (first.budget.asked, first.budget.labelled, first.budget.skipped) == (4, 2, 2)
    tasks_before = len(store.labels()), store.progress(1)["total"]
    clips_before = {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").iterdir()}
    # a resumed loop asks the same pairs again: no new task and no new clip; the answers given so far count
    second = teacher()
    again = second.label_pairs(pairs)
    assert (len(store.labels()), store.progress(1)["total"]) == tasks_before == (2, 4)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").iterdir()} == clips_before
    assert [(p.id, p.label) for p in again] == [(p.id, p.label) for p in labelled]


def test_bad_teacher_settings_exit_2_without_writing(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["pbrl", "--teacher", "human", "--out", out]) == 2
    assert "needs db" in capsys.readouterr().err
    missing = tmp_path / "nope.sqlite"
    assert main(["pbrl", "--teacher", "human", "--db", str(missing), "--out", out]) == 2
    assert "no label store here" in capsys.readouterr().err and not missing.exists()
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database at all" * 100)
    assert main(["pbrl", "--teacher", "human", "--db", str(corrupt), "--out", out]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and "label store" in err
    assert corrupt.read_bytes() == b"not a database at all" * 100
    assert main(["pbrl", "--teacher", "human", "--db", str(missing), "--parts", "[listwise]", "--out", out]) == 2
    assert "listwise" in capsys.readouterr().err
