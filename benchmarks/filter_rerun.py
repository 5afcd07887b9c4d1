"""`qponder filter` on a folder, then the same command again: the rerun is answered by the results store.

Prints the wall time of both runs (each a fresh `python -m qponder_plugin filter` process, model load included in
the first), their ratio, and the model calls each made (from the `--json` summary).

    .venv/bin/python benchmarks/filter_rerun.py                       # 64 synthetic images, the smoke model
    .venv/bin/python benchmarks/filter_rerun.py --folder DIR --model nano
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from provenance import weights_header
from smoke_model import MODEL_HELP, model_or_smoke, solid_image


def run(command: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--folder", type=Path, help="images to filter (default: --images synthetic ones)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=3.0)
    args = parser.parse_args()
    args.model = model_or_smoke(args.model)
    print(weights_header(args.model), flush=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        folder = args.folder
        if folder is None:
            folder = work / "images"
            folder.mkdir()
            for index, level in enumerate(np.linspace(0, 1, args.images)):
                solid_image(level, 128, seed=3000 + index).save(folder / f"{index:04d}.png")
        command = [sys.executable, "-m", "qponder_plugin", "filter", str(folder), "--threshold", str(args.threshold),
                   "--keep", str(work / "keep"), "--reject", str(work / "reject"), "--store", str(work / "s.sqlite"),
                   "--model", args.model, "--json"]
        first, first_s = run(command)
        again, again_s = run(command)
    print(f"{first['total']} images, model {args.model}")
    print(f"first run {first_s:.1f} s ({first['model_calls']} model calls); rerun {again_s:.1f} s "
          f"({again['model_calls']} model calls, {again['cached']} from the store); ratio {first_s / again_s:.1f}x")


if __name__ == "__main__":
    main()
