"""Throughput of the three backends on the same model and images, measured side by side in one run.

The same images are scored in no-think and think mode by: the ``transformers`` backend in-process; the ``vllm``
backend (vLLM's offline engine), in a child process, at one or more batch sizes; and the ``openai`` backend
against vLLM's OpenAI-compatible server, at several concurrencies (batch size = concurrency, so that many
requests are in flight). Each backend's scores are compared with the transformers backend's.

Like for like: every figure is the scorer's own ``infer_ms`` (each batch's generate call, shared by its images),
so images/s = 1000 / mean ``infer_ms``; the wall time of the whole ``assess_batch`` call (loading and parsing
included) is shown beside it. Engine start-up and a warm-up on two images are outside every figure. vLLM's prefix
caching and multimodal processor cache are off, offline and served: with both off, vLLM also names each image per
request instead of by content hash, so its encoder cache cannot hand one run's vision-encoder outputs to the next
(checked: re-scoring the same images gives 0 encoder-cache hits).

On CPU, vLLM runs from the cached engine venv (``benchmarks/engines.py``) with the CPU settings; ``--gpu`` uses the
vLLM installed in the current venv with its GPU defaults. This machine may be noisy: read the ratios.

    .venv/bin/python benchmarks/backend_throughput.py        # nano, 32 AGIQA-3K val images (else examples/images)
    .venv/bin/python benchmarks/backend_throughput.py --limit 8 --vllm-batch 8 --concurrency 8    # a quick run
    .venv/bin/python benchmarks/backend_throughput.py --out benchmarks/results/backend_throughput_nano.txt
    python benchmarks/backend_throughput.py --model Qwen/Qwen2.5-VL-7B-Instruct --gpu    # a GPU, vLLM installed
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import engines
from engines import CPU_ENGINE, engine_env, engine_python, stop
from provenance import weights_line

from qponder_plugin.result import reading_mode

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
LOG_DIR = ROOT / ".cache" / "bench"
AGIQA = ROOT.parent / "shared" / "data" / "agiqa-3k" / "labels.csv"
MODES = (False, True)  # think off, then on
NO_CACHES = {"enable_prefix_caching": False, "mm_processor_cache_gb": 0}
# On a GPU: vLLM's own defaults, with the offline backend's context length also for the server (whose default,
# the model's full context, may not fit the KV cache).
GPU_ENGINE = {"max_model_len": 8192}
RESULT = "RESULT "
STARTED = time.perf_counter()

# The offline engine in a child process: on CPU it lives in another venv; on a GPU it must not share the device.
OFFLINE_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import vllm
from backend_throughput import measure
from qponder_plugin.scorer import Scorer
config = json.loads(sys.argv[2])
with Scorer(config["model"], backend="vllm", **config["engine"]) as scorer:
    runs = measure(scorer, config["images"], config["batches"])
print("RESULT " + json.dumps({"version": vllm.__version__, "runs": runs}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nano", help="alias, hub id or folder (default: the bundled nano)")
    parser.add_argument("--data", type=Path, default=AGIQA,
                        help="AGIQA-3K labels.csv (default ../shared/data/agiqa-3k/labels.csv; if it is absent, "
                             "examples/images/*.jpg)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", "--images", type=int, default=32,
                        help="an evenly spaced sample of N images of the split (default 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="the transformers backend's batch size")
    parser.add_argument("--vllm-batch", type=int, nargs="+", default=[8, 32], help="offline vLLM batch sizes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                        help="requests in flight to the vLLM server (the batch size too)")
    parser.add_argument("--gpu", action="store_true",
                        help="vLLM from the current venv with its GPU defaults (no engine venv, no CPU settings)")
    parser.add_argument("--out", type=Path, help="also write the report to OUT")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH")
    return parser.parse_args(argv)


def note(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


def pick_images(args: argparse.Namespace) -> tuple[list[str], str]:
    """Paths of the benchmark images and a description of where they come from."""
    if not args.data.is_file():
        paths = sorted(str(p) for p in (ROOT / "examples" / "images").glob("*.jpg"))[:args.limit]
        return paths, f"{len(paths)} images from examples/images ({args.data} not found)"
    with args.data.open(newline="") as labels:
        names = [row["name"] for row in csv.DictReader(labels) if row["split"] == args.split]
    names = names[::max(1, len(names) // args.limit)][:args.limit]  # the file is sorted by generator
    return ([str(args.data.parent / "images" / name) for name in names],
            f"{len(names)} AGIQA-3K {args.split} images (evenly spaced)")


def measure(scorer, images: list[str], batches: list[int]) -> list[dict]:
    """Warm up on two images, then score ``images`` once per mode and batch size; per-image rows are
    ``[status, score, infer_ms]``."""
    for think in MODES:
        scorer.assess_batch(images[:2], think=think)
    runs = []
    for think in MODES:
        for batch in batches:
            scorer.batch_size = batch
            started = time.perf_counter()
            found = scorer.assess_batch(images, think=think)
            runs.append({"think": think, "batch": batch, "wall_s": time.perf_counter() - started,
                         "rows": [[a.status, a.score, a.timings.get("infer_ms")] for a in found]})
    return runs


def engine_settings(gpu: bool) -> dict:
    return {**(GPU_ENGINE if gpu else CPU_ENGINE), **NO_CACHES}


def engine_process(gpu: bool) -> tuple[str, dict[str, str]]:
    """The python that runs vLLM and its environment."""
    return (sys.executable, dict(os.environ)) if gpu else (str(engine_python()), engine_env())


def run_offline(args: argparse.Namespace, model: str, images: list[str]) -> dict:
    """The offline runs, in a child process with its own engine; vLLM's log goes to .cache/bench."""
    python, env = engine_process(args.gpu)
    config = {"model": model, "images": images, "batches": args.vllm_batch, "engine": engine_settings(args.gpu)}
    log = LOG_DIR / "backend_throughput-offline.log"
    with log.open("w") as output:
        child = subprocess.Popen([python, "-c", OFFLINE_CHILD, str(BENCH_DIR), json.dumps(config)], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=output, text=True, start_new_session=True)
        try:
            stdout, _ = child.communicate()
        finally:
            stop(child)  # and any engine worker left behind
    found = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    if not found:
        raise SystemExit(f"the offline vLLM run failed ({child.returncode}); see {log}")
    return json.loads(found[-1][len(RESULT):])


@contextlib.contextmanager
def vllm_server(args: argparse.Namespace, model: str) -> Iterator[str]:
    """vLLM's OpenAI-compatible server for ``model`` with this run's settings (caches off); yield its base URL."""
    python, env = engine_process(args.gpu)
    with engines.vllm_server(model, engine=engine_settings(args.gpu), python=python, env=env, startup=1800,
                             log=LOG_DIR / "backend_throughput-server.log") as (base_url, _):
        yield base_url


def run_server(args: argparse.Namespace, model: str, images: list[str]) -> list[dict]:
    """The openai backend against one vLLM server, one scorer per concurrency."""
    from qponder_plugin.scorer import Scorer

    runs = []
    with vllm_server(args, model) as base_url:
        for concurrency in args.concurrency:
            note(f"openai backend, concurrency {concurrency}")
            with Scorer(model, backend="openai", base_url=base_url, batch_size=concurrency, concurrency=concurrency,
                        timeout=600, max_retries=0) as scorer:  # a failure shows in the ok column, not as a retry
                runs += measure(scorer, images, [concurrency])
    return runs


def run_transformers(args: argparse.Namespace, model: str, images: list[str]) -> tuple[list[dict], str]:
    """The transformers runs in this process, and a description of the device."""
    import torch
    from transformers.utils.logging import disable_progress_bar

    from qponder_plugin.scorer import Scorer

    disable_progress_bar()
    with Scorer(model, backend="transformers", batch_size=args.batch_size) as scorer:
        device, dtype = scorer.backend.device, scorer.backend.dtype
        runs = measure(scorer, images, [args.batch_size])
    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{torch.get_num_threads()} torch threads"
    return runs, f"{device}, {where}, {str(dtype).removeprefix('torch.')}"


def summarize(name: str, setting: str, run: dict, reference: dict | None) -> dict:
    """One table row: throughput from per-image infer_ms, wall throughput, and agreement with ``reference``."""
    rows = run["rows"]
    ms = statistics.fmean(row[2] for row in rows if row[2] is not None)
    diffs = [abs(row[1] - ref[1]) for row, ref in zip(rows, reference["rows"] if reference else [])
             if row[1] is not None and ref[1] is not None]
    return {"backend": name, "mode": reading_mode(run["think"]), "setting": setting,
            "images_per_s": 1000 / ms, "ms_per_image": ms, "wall_images_per_s": len(rows) / run["wall_s"],
            "ok": sum(row[0] == "ok" for row in rows), "images": len(rows),
            "max_score_diff": max(diffs) if diffs else None, "compared": len(diffs),
            "differ": sum(d >= 5e-5 for d in diffs)}


def table(results: list[dict]) -> list[str]:
    """The results as aligned text, with each backend's best setting per mode starred."""
    best = {}
    for r in results:
        key = (r["backend"], r["mode"])
        best[key] = max(best.get(key, 0), r["images_per_s"])
    counts = {key: sum((r["backend"], r["mode"]) == key for r in results) for key in best}
    lines = [f"{'backend':<20} {'mode':<9} {'setting':<10} {'img/s':>7} {'ms/img':>7} {'vs tf':>6} {'wall img/s':>10} "
             f"{'ok':>6} {'max |d score|':>13} {'differ':>6}"]
    for r in results:
        key = (r["backend"], r["mode"])
        star = "*" if counts[key] > 1 and r["images_per_s"] == best[key] else ""
        diff, differ = ("-", "-") if r["max_score_diff"] is None else \
            (f"{r['max_score_diff']:.4f}", f"{r['differ']}/{r['compared']}")
        lines.append(f"{r['backend']:<20} {r['mode']:<9} {r['setting'] + star:<10} {r['images_per_s']:>7.2f} "
                     f"{r['ms_per_image']:>7.1f} {r['ratio']:>5.2f}x {r['wall_images_per_s']:>10.2f} "
                     f"{r['ok']:>3}/{r['images']:<2} {diff:>13} {differ:>6}")
    return lines


def closing(results: list[dict], args: argparse.Namespace, device: str) -> list[str]:
    """What the figures mean, and the one command for a GPU."""
    def best(mode: str) -> dict:
        return max((r for r in results if r["mode"] == mode and r["backend"] != "transformers"),
                   key=lambda r: r["images_per_s"])

    fast, slow = best("no-think"), best("think")
    here = "On this GPU" if args.gpu else (
        f"On this CPU, vLLM's worker runs one OpenMP thread bound to one core (transformers: {device}) and the model "
        "is tiny, so these ratios say little about what batching buys")
    return [
        f"{here}: the best vLLM setting scores {fast['ratio']:.2f}x the transformers backend's images/s without "
        f"reasoning ({fast['backend']}, {fast['setting']}) and {slow['ratio']:.2f}x with it ({slow['backend']}, "
        f"{slow['setting']}).",
        "These ratios do not carry over to a 7B model on a GPU. There decoding is memory-bound and batching is what "
        "pays: transformers pads each static batch to its longest prompt and waits for its longest reasoning chain, "
        "while vLLM's continuous batching refills a finished sequence's slot at every step and paged attention "
        "keeps the KV cache of hundreds of sequences in memory. For thousands of images, think mode above all, "
        "that is where vLLM (offline, or as a server behind the openai backend with enough requests in flight) "
        "makes the difference. Measure it there with vLLM installed in the current venv:",
        "    python benchmarks/backend_throughput.py --model Qwen/Qwen2.5-VL-7B-Instruct --gpu",
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from qponder_plugin.spec import ModelSpec

    began, load = time.perf_counter(), os.getloadavg()[0]
    model = ModelSpec.resolve(args.model).checkpoint  # the served name too: the server is started with this string
    images, source = pick_images(args)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # vLLM first, transformers last: on a GPU the engines then never share the device with this process's model.
    note("vLLM offline engine (child process)")
    offline = run_offline(args, model, images)
    note("vLLM server")
    served = run_server(args, model, images)
    note("transformers backend")
    local, device = run_transformers(args, model, images)
    minutes = (time.perf_counter() - began) / 60

    reference = {run["think"]: run for run in local}
    results = [summarize("transformers", f"batch {r['batch']}", r, None) for r in local]
    results += [summarize("vllm offline", f"batch {r['batch']}", r, reference[r["think"]]) for r in offline["runs"]]
    results += [summarize("openai->vllm server", f"conc {r['batch']}", r, reference[r["think"]]) for r in served]
    tf_rate = {r["mode"]: r["images_per_s"] for r in results if r["backend"] == "transformers"}
    for r in results:
        r["ratio"] = r["images_per_s"] / tf_rate[r["mode"]]
    results.sort(key=lambda r: (r["mode"] == "think", r["backend"] != "transformers"))

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    python = os.path.relpath(sys.executable) if not args.gpu else "python"
    engine = "GPU defaults" if args.gpu else "the CPU settings of benchmarks/engines.py"
    report = [
        f"# {shlex.join([python, *sys.argv])}",
        f"# {time.strftime('%Y-%m-%d')}, commit {commit}, {os.cpu_count()} CPU cores",
        weights_line(model),
        f"model {model}; {source}; {minutes:.1f} min in all (engine start-ups included); 1-min load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        f"vLLM {offline['version']}, {engine} {engine_settings(args.gpu)}; transformers on {device}",
        "vLLM prefix caching and processor cache off; every image scored once per run, after a two-image warm-up",
        "",
        *table(results),
        "",
        "img/s = 1000 / mean per-image infer_ms (each batch's generate call shared by its images); vs tf = img/s over "
        "the transformers backend's in the same mode; wall img/s = images / wall time of assess_batch (loading and "
        "parsing included); max |d score| and differ (|d| >= 0.00005) compare scores with the transformers "
        "backend's, image by image; * = that backend's best setting in that mode.",
        "",
        *closing(results, args, device),
    ]
    text = "\n".join(report) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "images": images, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
