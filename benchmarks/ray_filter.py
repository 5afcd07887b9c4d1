"""`qponder filter`'s engines side by side: local against Ray Data with 1 and 2 workers, on the same images.

One process, each run into a fresh store: the local engine (model load included), then a local Ray cluster
(``ray.init`` timed), a Ray run over one image (the fixed start-up: actor start and model load, plus one image),
and Ray runs over every image with 1 and 2 workers. The per-image overhead of a Ray worker is its steady cost per
image, ``(wall - one-image run) / (images - 1)``, times the workers (each has its own share), less the local
engine's steady cost per image, measured the same way (the same model, one thread).

Cluster figure (on paper, not measured here): ``workers x per-GPU throughput`` of the vLLM backend, scaled by
``model time / (model time + measured overhead)`` per image. ``--gpu-images-per-s`` is an assumption to replace
with a measured figure: the default, 20 no-think images/s, is a 7B model's ~1,300-token image prefill at ~26k
prefill tokens/s on one data-centre GPU.

    .venv/bin/python benchmarks/ray_filter.py                 # 32 AGIQA-3K val images (else examples/images), nano
    .venv/bin/python benchmarks/ray_filter.py --images 16 --model PATH
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

from provenance import weights_header

from qponder_plugin.filter.engine import FilterRun
from qponder_plugin.filter.options import FilterOptions, RayOptions
from qponder_plugin.filter.ray_engine import RayFilterRun
from qponder_plugin.filter.sources import collect_inputs
from qponder_plugin.filter.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT.parent / "shared" / "data" / "agiqa-3k" / "labels.csv"


def pick_images(count: int, folder: Path) -> str:
    """``count`` evenly spaced AGIQA-3K val images copied into ``folder``, else the bundled examples."""
    if LABELS.is_file():
        with open(LABELS, newline="") as handle:
            names = [row["name"] for row in csv.DictReader(handle) if row["split"] == "val"]
        for name in names[::max(1, len(names) // count)][:count]:
            shutil.copy(LABELS.parent / "images" / name, folder / name)
        return f"{count} AGIQA-3K val images"
    for path in sorted((ROOT / "examples" / "images").glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)
    return f"{len(list(folder.iterdir()))} images of examples/images"


def run(engine: str, inputs, args, workers: int = 1) -> tuple[float, dict]:
    """A filter run into a fresh store: wall seconds (model load included) and the summary."""
    options = FilterOptions(threshold=args.threshold, model=args.model, engine=engine,
                            ray=RayOptions(workers=workers, batch_size=8))
    with tempfile.TemporaryDirectory() as scratch, ResultStore(Path(scratch) / "s.sqlite") as store, \
            options.gate() as gate:
        config = options.scoring_config()
        started = time.perf_counter()
        filter_run = (FilterRun if engine == "local" else RayFilterRun)(store, gate, config, options)
        for _ in filter_run.outcomes(filter_run.settle(inputs)):
            pass
        return time.perf_counter() - started, filter_run.summary.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--gpu-images-per-s", type=float, default=20.0)
    parser.add_argument("--cluster-workers", type=int, default=8)
    args = parser.parse_args()
    print(weights_header(args.model), flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the local engine on one thread, as each Ray actor
    import ray
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        what = pick_images(args.images, Path(folder))
        inputs = collect_inputs([folder])
        count = len(inputs)
        local_one_s, _ = run("local", inputs[:1], args)
        local_s, local = run("local", inputs, args)
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, logging_level="ERROR",
                 log_to_driver=False)
        init_s = time.perf_counter() - started
        one_s, _ = run("ray", inputs[:1], args)
        walls = {n: run("ray", inputs, args, workers=n) for n in (1, 2)}
        ray.shutdown()
    calls = ", ".join(f"{v} {k}" for k, v in local["calls"].items())
    print(f"{what}, model {args.model}, threshold {args.threshold}: {local['model_calls']} model calls ({calls})")
    print(f"Ray fixed start-up: ray.init {init_s:.1f} s; a 1-image run (actor start, model load, 1 image) "
          f"{one_s:.1f} s")
    local_ms = 1000 * (local_s - local_one_s) / (count - 1)
    print(f"{'engine':<7} {'workers':>7} {'wall s':>7} {'1-image s':>9} {'ms/image':>8} {'steady ms/image':>15} "
          f"{'overhead ms/image':>17}")
    print(f"{'local':<7} {1:>7} {local_s:>7.1f} {local_one_s:>9.1f} {1000 * local_s / count:>8.0f} {local_ms:>15.0f} "
          f"{'-':>17}")
    overhead = {}
    for workers, (wall, summary) in walls.items():
        assert summary["model_calls"] == local["model_calls"], (summary, local)
        steady = 1000 * (wall - one_s) / (count - 1)
        overhead[workers] = steady * workers - local_ms  # per image, per worker: what Ray adds to the model's time
        print(f"{'ray':<7} {workers:>7} {wall:>7.1f} {one_s:>9.1f} {1000 * wall / count:>8.0f} {steady:>15.0f} "
              f"{overhead[workers]:>17.0f}")
    model_ms = 1000 / args.gpu_images_per_s
    extra = max(0.0, overhead[1])
    cluster = args.cluster_workers * args.gpu_images_per_s * model_ms / (model_ms + extra)
    print(f"On paper: {args.cluster_workers} GPU workers x {args.gpu_images_per_s:g} images/s (vLLM, assumed) = "
          f"{args.cluster_workers * args.gpu_images_per_s:.0f} images/s; with the 1-worker overhead measured here "
          f"({extra:.0f} ms/image, a CPU figure: an upper bound) {cluster:.0f} images/s, "
          f"{cluster * 3600 / 1e6:.2f} M images/hour")


if __name__ == "__main__":
    main()
