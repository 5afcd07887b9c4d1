"""Fine-tuning the bundled model (trained on AI-generated images only) on photos, the way a user would: `qponder
train run` on 200 and on 1,000 photos of BIQ2021's official train split, evaluated on its official test split
(2,000 photos, never trained on). Prints SRCC and PLCC before and after, and the minutes each run took here.

    git clone https://github.com/nisarahmedrana/BIQ2021 ../BIQ2021      # 12,000 photos, 424 MB
    .venv/bin/python benchmarks/finetune.py --biq2021 ../BIQ2021 [--sizes 200 1000] [--out runs/finetune]

The train photos are a seeded sample of the train split (the 200 inside the 1,000). Each size is one resumable run
folder; the base model's evaluation is made once and shared. Fine-tuning minutes cover distill, SFT, GRPO and export;
the evaluations (three of 2,000 photos per run) are counted apart.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from provenance import weights_line
from qponder_plugin.training.data import read_mos

TRAINING = ("distill", "sft", "grpo", "export")


def labels(train, test, path: Path) -> Path:
    """A label file of the run: the train sample and the whole test split (the run's held-out set), MOS on 0–1."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mos", "split"])
        writer.writerows([r.image, r.raw_mos, split] for rows, split in ((train, "train"), (test, "test"))
                         for r in rows)
    return path


def run(size: int, train, test, out: Path, model: str, extra: list[str]) -> dict:
    folder = out / f"n{size}"
    folder.mkdir(parents=True, exist_ok=True)
    base = out / "base-eval.json"
    if base.is_file() and not (folder / "eval" / "base.json").is_file():  # the same model on the same photos
        (folder / "eval").mkdir(exist_ok=True)
        shutil.copy(base, folder / "eval" / "base.json")
    data = labels(train[:size], test, folder / "labels.csv")
    command = [sys.executable, "-m", "qponder_plugin", "train", "run", "--data", str(data), "--score-range", "0",
               "1", "--model", model, "--out", str(folder), *extra]
    print("$", " ".join(command), flush=True)
    with open(folder / "run.json", "w") as output:
        subprocess.run(command, check=True, stdout=output)
    summary = json.loads((folder / "run.json").read_text().splitlines()[-1])
    if not base.is_file():
        shutil.copy(folder / "eval" / "base.json", base)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--biq2021", type=Path, required=True, help="A clone of the BIQ2021 repository.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, help="Also write the table to this file.")
    args, extra = parser.parse_known_args()  # anything else goes to `qponder train run`
    train = list(read_mos(args.biq2021 / "Train (Images and MOS).csv"))
    test = list(read_mos(args.biq2021 / "Test (Images and MOS).csv"))
    random.Random(args.seed).shuffle(train)
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    summaries = {size: run(size, train, test, args.out, args.model, extra) for size in sorted(args.sizes)}

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    lines = [f"# .venv/bin/python benchmarks/finetune.py {' '.join(sys.argv[1:])}",
             f"# {time.strftime('%Y-%m-%d')}, commit {commit}, load average {load:.1f} at the start",
             weights_line(args.model),  # the base model the runs start from
             f"model {args.model}, BIQ2021 official test split ({len(test)} photos); train photos: a seed-"
             f"{args.seed} sample of its train split; extra options: {' '.join(extra) or 'none'}", "",
             f"{'train photos':>12} {'SRCC before':>11} {'after SFT':>9} {'after GRPO':>10} {'gain':>6} "
             f"{'PLCC before':>11} {'after':>6} {'fine-tune min':>13} {'eval min':>8}"]
    for size, summary in summaries.items():
        table = {row["stage"]: row for row in summary["table"]}
        seconds = summary["seconds"]
        tuning = sum(seconds.get(stage, 0.0) for stage in TRAINING) / 60
        evals = sum(v for k, v in seconds.items() if k.startswith("eval")) / 60
        lines.append(f"{size:>12} {table['base']['srcc']:>11.3f} {table['sft']['srcc']:>9.3f} "
                     f"{table['grpo']['srcc']:>10.3f} {table['grpo']['srcc'] - table['base']['srcc']:>+6.3f} "
                     f"{table['base']['plcc']:>11.3f} {table['grpo']['plcc']:>6.3f} {tuning:>13.1f} {evals:>8.1f}")
    text = "\n".join(lines)
    print(text)
    if args.results:
        args.results.write_text(text + "\n")


if __name__ == "__main__":
    main()
