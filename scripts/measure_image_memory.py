"""Peak memory of the worst image cases, each in a fresh process: RSS peak above the process's baseline.

Cases: the largest image the default pixel limit allows (14,142² = 199,996,164 pixels) as RGB and RGBA PNG and as
JPEG, through ``load_image(max_side=512)`` (what scoring does), ``check_image`` (what the readers do at import) and
``check_media``; the 21,000² PNG of issue 21 and a 20,000² 1-bit bomb (refused from the header). The baseline is
the RSS after imports; the peak is ``VmHWM`` (Linux). Generated files go to a temporary folder and are removed.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_image_memory.py [--side 14142]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, psutil
from mmpref.data.media import MediaError, check_image, check_media
from mmpref.vision.media import load_image
baseline = psutil.Process().memory_info().rss
path, how = sys.argv[1], sys.argv[2]
try:
    if how == "load_image":
        result = "ok %sx%s" % load_image(path, max_side=512).size
    elif how == "check_image":
        result = check_image(path) or "ok"
    else:
        result = check_media(path).mime
except MediaError as err:
    result = "refused: " + err.reason[:60]
# VmHWM: this process image's own RSS peak (ru_maxrss would carry the parent's peak over the exec)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"baseline_mib": baseline / 2**20, "above_baseline_mib": (peak - baseline) / 2**20,
                  "result": result[:70]}))
"""


def _make(folder: Path, side: int) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "badinput"))
    from _media_cases import bomb_png

    files = {}
    row = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    for mode in ("RGB", "RGBA"):
        image = Image.new(mode, (side, side), (30, 120, 200, 255)[: len(mode)])
        image.paste(Image.fromarray(np.tile(row, (64, 1))).convert(mode), (0, 0))  # not one flat colour
        files[f"png-{mode}-{side}"] = folder / f"{mode}.png"
        image.save(files[f"png-{mode}-{side}"], compress_level=1)
        if mode == "RGB":
            files[f"jpeg-{side}"] = folder / "rgb.jpg"
            image.save(files[f"jpeg-{side}"], quality=85)
        del image
    files["png-21000-issue"] = folder / "issue.png"
    files["png-21000-issue"].write_bytes(bomb_png(21_000, 21_000, 8, 2, full=False))
    files["bomb-1bit-20000"] = folder / "bomb.png"
    files["bomb-1bit-20000"].write_bytes(bomb_png(20_000, 20_000))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=14_142, help="side of the square test images")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mmpref-mem-"))
    rows = []
    try:
        for name, path in _make(folder, args.side).items():
            for how in ("load_image", "check_image", "check_media"):
                run = subprocess.run([sys.executable, "-c", CHILD, str(path), how], capture_output=True, text=True)
                if run.returncode != 0:
                    raise SystemExit(f"{name} {how} failed:\n{run.stderr}")
                rows.append({"case": name, "reader": how, "file_mib": path.stat().st_size / 2**20,
                             **json.loads(run.stdout)})  # fmt: skip
                print(f"{name:18s} {how:12s} +{rows[-1]['above_baseline_mib']:7.1f} MiB  {rows[-1]['result']}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    worst = max(rows, key=lambda r: r["above_baseline_mib"])
    print(f"worst: {worst['case']} through {worst['reader']}: +{worst['above_baseline_mib']:.1f} MiB above baseline")


if __name__ == "__main__":
    main()
