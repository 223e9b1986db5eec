"""End to end in real headless Chromium (Debian's chromium, driven by Playwright; no browser download)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mmpref.data import read_jsonl_manifest
from mmpref.feedback.exchange import export_labels
from mmpref.feedback.loadtest import app_in_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
)
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server(store):
    store.add_annotator("ann", "token-ann-123")
    with app_in_thread(store) as url:
        yield url


def test_annotator_labels_every_task_kind_in_the_browser(server, store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("MMPREF_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(server)
        page.fill("#token", "not-the-token")
        page.click("#login-button")
        page.wait_for_selector("#login-error:has-text('not accepted')")
        page.fill("#token", "token-ann-123")
        page.screenshot(path=str(shots / "0-sign-in.png"))
        page.click("#login-button")

        page.wait_for_selector("#task[data-kind='pair'] #choose-left")  # pair 1: by click
        page.wait_for_function("[...document.images].every((i) => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shots / "1-pair.png"))
        first_task = page.locator("#task img").first.get_attribute("src")
        page.click("#choose-left")
        page.wait_for_function(f"!document.querySelector(\"#task img[src='{first_task}']\")")

        page.wait_for_selector("#task[data-kind='pair'] #choose-right")  # pair 2: by key
        page.keyboard.press("ArrowRight")

        page.wait_for_selector("#task[data-kind='list'] #rank-list li")  # list: drag item 4 to the top
        page.screenshot(path=str(shots / "2-rank-before.png"))
        page.drag_and_drop("#rank-item-3", "#rank-item-0", target_position={"x": 20, "y": 4})
        order = page.eval_on_selector_all("#rank-list li", "els => els.map((e) => Number(e.dataset.position))")
        assert order == [3, 0, 1, 2]
        page.screenshot(path=str(shots / "3-rank-after.png"))
        page.keyboard.press("Enter")

        page.wait_for_selector("#task[data-kind='rating'] #rate-4")  # rating
        page.screenshot(path=str(shots / "4-rating.png"))
        page.click("#rate-4")
        page.wait_for_selector("#all-done")
        assert "labelled 4 / 4" in page.inner_text("#progress")
        page.screenshot(path=str(shots / "5-done.png"))
        browser.close()

    stored = {store.task(lb.task_id).kind + str(lb.task_id): lb for lb in store.labels()}
    assert {k: v.answer for k, v in stored.items()} == {
        "pair1": {"choice": 0},
        "pair2": {"choice": 1},
        "list3": {"ranking": [3, 0, 1, 2]},
        "rating4": {"rating": 4},
    }
    assert all(lb.response_ms is not None and lb.response_ms > 0 for lb in stored.values())
    records = read_jsonl_manifest(export_labels(store, tmp_path / "export.jsonl"))
    assert [type(r).__name__ for r in records] == ["PreferencePair", "PreferencePair", "PreferenceList", "Rating"]
    assert records[0].label == 1.0 and records[1].label == 0.0 and records[3].rating == 4.0


def test_video_pairs_play_pause_and_seek_in_sync(store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    import numpy as np

    from mmpref.vision.media import save_video

    frames = [np.zeros((64, 96, 3), np.uint8) for _ in range(32)]
    for i, frame in enumerate(frames):
        frame[:, (3 * i) % 88 : (3 * i) % 88 + 8] = 255  # a bar sweeping across: a moving "robot"
    clips = [save_video(frames, tmp_path / "a.mp4"), save_video(frames[::-1], tmp_path / "b.mp4")]
    task = store.add_task("pair", clips, prompt="Which robot does the task better?")
    store.add_annotator("vid", "token-vid-123")
    annotator = store.annotator_for_token("token-vid-123")[0]
    for done in (1, 2, 3, 4):  # leave only the video task in this annotator's queue
        answer = {"pair": {"choice": 0}, "list": {"ranking": [0, 1, 2, 3]}, "rating": {"rating": 3}}
        store.add_label(annotator, done, answer[store.task(done).kind], f"uuid-skip-{done}")
    with app_in_thread(store) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*LAUNCH_ARGS, "--autoplay-policy=no-user-gesture-required"],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 600})
        page.goto(url)
        page.fill("#token", "token-vid-123")
        page.click("#login-button")
        page.wait_for_selector("video")
        page.wait_for_function("[...document.querySelectorAll('video')].every((v) => v.currentTime > 0.5)")
        state = "vs => vs.map((v) => [v.paused, Math.round(v.currentTime * 10) / 10])"
        page.eval_on_selector("video", "v => v.pause()")  # pausing one pauses both
        page.wait_for_function("[...document.querySelectorAll('video')].every((v) => v.paused)")
        page.eval_on_selector("video", "v => { v.currentTime = 1.5; }")  # seeking one seeks both
        page.wait_for_function(
            "[...document.querySelectorAll('video')].every((v) => Math.abs(v.currentTime - 1.5) < 0.05)"
        )
        assert page.eval_on_selector_all("video", state) == [[True, 1.5], [True, 1.5]]
        shots = Path(os.environ.get("MMPREF_SCREENSHOTS", tmp_path / "shots"))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "6-video-pair.png"))
        page.keyboard.press("l")
        page.wait_for_selector("#all-done")
        browser.close()
    labels = [lb for lb in store.labels(annotator) if lb.task_id == task]
    assert len(labels) == 1 and labels[0].answer == {"choice": 1}
