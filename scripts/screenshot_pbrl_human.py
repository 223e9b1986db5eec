"""Screenshot of a PbRL query waiting in the labelling app (``docs/images/pbrl_human_task.png``), in real Chromium.

Runs a short ``--teacher human`` loop (reach-v3, one feedback round of 3 queries at step 300) in a thread against a
fresh store and a served app, signs in as an annotator in headless Chromium (Debian's ``chromium`` driven by
Playwright, as ``tests/feedback/test_browser.py`` does), pauses the first pair's clips mid-way, takes the
screenshot, then answers every query with the keyboard and checks that the loop finished with those labels.

    MUJOCO_GL=egl .venv/bin/python scripts/screenshot_pbrl_human.py --out docs/images/pbrl_human_task.png
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from mmpref.control.pbrl.loop import PbRLConfig, PbRLLoop
from mmpref.feedback.loadtest import app_in_thread
from mmpref.feedback.store import LabelStore

TOKEN = "token-screenshot-1"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/pbrl_human_task.png")
    parser.add_argument("--task", default="reach-v3")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pbrl-human-"))
    store = LabelStore(work / "labels.sqlite")
    store.add_annotator("ann", TOKEN)
    config = PbRLConfig(
        task=args.task,
        total_steps=300,
        learning_starts=100,
        feedback_every=300,
        queries_per_round=3,
        max_labels=3,
        segment_length=50,
        reward_updates=50,
        eval_every=300,
        eval_episodes=1,
        device="cpu",
        teacher="human",
        db=str(work / "labels.sqlite"),
        human_poll_s=0.2,
    )
    with app_in_thread(store) as url:
        loop = PbRLLoop(config, progress=True)
        runner = threading.Thread(target=loop.run, daemon=True)
        runner.start()
        while len(loop.teacher.asked) < 3:  # the round has rendered and posted its three pairs
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(f"{url}/")
            page.fill("#token", TOKEN)
            page.click("#login-button")
            page.wait_for_selector("#task[data-kind='pair'] video")
            page.wait_for_function("[...document.querySelectorAll('video')].every((v) => v.currentTime > 1.2)")
            page.eval_on_selector("video", "v => v.pause()")  # the app pauses both clips together
            time.sleep(0.3)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
            for k, key in enumerate(["ArrowLeft", "ArrowRight", "ArrowDown"], start=1):
                page.wait_for_selector("#choose-left")
                page.keyboard.press(key)
                page.wait_for_function(f"document.getElementById('progress').textContent.startsWith('labelled {k} ')")
            browser.close()
        runner.join(timeout=300)
    print(f"wrote {args.out}; the loop finished at step {loop.steps} with labels {[p.label for p in loop.labelled]}")


if __name__ == "__main__":
    main()
