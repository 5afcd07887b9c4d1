"""Throughput, import cost and peak memory of qponder_plugin, measured side by side in one run.

The same pre-loaded images are scored with the same checkpoint three ways: a naive per-image transformers loop
(the way peers' demo scripts score), our batched think mode, and our no-think probability mode. Then
``import qponder_plugin`` is timed in fresh interpreters, and the peak RSS of scoring a 24-megapixel JPEG is
compared with that of a 512x512 one, each in its own fresh process. This machine may be noisy: read the
ratios, not the absolute times.

    .venv/bin/python benchmarks/throughput.py                  # smoke model, 32 synthetic images
    .venv/bin/python benchmarks/throughput.py --quick          # about a minute
    .venv/bin/python benchmarks/throughput.py --agiqa --model DIR --json results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from smoke_model import MODEL_HELP, model_or_smoke

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".cache" / "bench"
ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
NUMBER = re.compile(r"\d+(?:\.\d+)?")

IMPORT_CHILD = """
import sys, time
started = time.perf_counter()
import qponder_plugin
print(time.perf_counter() - started, "torch" in sys.modules)
"""

# The child's own peak is VmHWM: ru_maxrss of an exec'd child also counts its launcher's peak (Linux carries the
# old image's high-water mark across exec), which here is the benchmark process with a model loaded.
RSS_CHILD = """
import json, resource, sys
from PIL import Image
from qponder_plugin import Scorer
model, path, loader = sys.argv[1:]
scorer = Scorer(model)
image = Image.open(path).convert("RGB") if loader == "naive" else path
result = scorer.assess(image, think=False)
try:
    with open("/proc/self/status") as status:
        peak = int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak, "status": result.status}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--images", type=int, help="number of images (default 32, --quick 8)")
    parser.add_argument("--agiqa", type=Path, metavar="DIR",
                        help="score real JPEGs from DIR (AGIQA-3K's images folder) instead of synthetic images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, help="think-mode budget (default 512, --quick 64)")
    parser.add_argument("--rounds", type=int, help="timed rounds per mode, best kept (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, here and in the memory children (default 1: on a shared CPU, "
                             "more threads spin-wait on each other and swamp the ratios; 0: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer images, tokens and rounds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH")
    args = parser.parse_args(argv)
    args.images = args.images or (8 if args.quick else 32)
    args.max_new_tokens = args.max_new_tokens or (64 if args.quick else 512)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args



def load_images(count: int, folder: Path | None) -> list:
    """Pre-load the inputs through qponder's loader, so every mode gets the very same pixels."""
    from smoke_model import solid_image

    from qponder_plugin.images import iter_image_files, load_image

    if folder is None:
        sources = [solid_image((i * 0.618) % 1.0, size=256 + (i * 97) % 513, seed=i) for i in range(count)]
    else:
        files = list(iter_image_files([str(folder)]))
        if len(files) < count:
            raise SystemExit(f"{folder}: {len(files)} images, fewer than --images {count}")
        sources = [files[i * len(files) // count] for i in range(count)]  # spread over the sorted list
    return [load_image(source) for source in sources]


def naive_loop(processor, model, images: list, prompt: str, max_new_tokens: int) -> list[tuple[float | None, str]]:
    """One image at a time, VisualQuality-R1 README style; returns (score, generated text) per image."""
    results = []
    for image in images:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image], padding=True, return_tensors="pt").to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        output = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        answer = ANSWER.search(output)
        number = NUMBER.search(answer.group(1)) if answer else None
        results.append((float(number.group()) if number else None, output))
    return results


def ours(scorer, images: list, think: bool) -> list[tuple[float | None, str]]:
    """Our Scorer in one mode; returns (text score, generated text) per image, like the naive loop."""
    prefix = "" if think else scorer.profile.answer_prefix
    return [(a.text_score, (a.raw or "")[len(prefix):]) for a in scorer.assess_batch(images, think=think)]


def measure_throughput(args: argparse.Namespace, model_dir: Path, images: list) -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils.logging import disable_progress_bar

    from qponder_plugin import Scorer
    from qponder_plugin.default_plugins.profiles import QPONDER
    from qponder_plugin.default_plugins.transformers_backend import pick_attention, pick_device, pick_dtype

    disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(None)
    dtype, attention = pick_dtype(device, None), pick_attention(device, None)
    print(f"device {device}, {dtype}, attention {attention}, {torch.get_num_threads()} torch threads")
    scorer = Scorer(model_dir, profile=QPONDER, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                    device=device, dtype=dtype, attn_implementation=attention)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
    model = model.to(device).eval()
    modes = {
        "naive loop": lambda batch: naive_loop(processor, model, batch, QPONDER.prompt(True), args.max_new_tokens),
        "batched think": lambda batch: ours(scorer, batch, think=True),
        "no-think": lambda batch: ours(scorer, batch, think=False),
    }
    for run in modes.values():
        run(images[:args.batch_size])  # warm-up
    seconds, outputs = dict.fromkeys(modes, math.inf), {}
    for _ in range(args.rounds):  # interleaved rounds, so a noisy spell hits every mode alike
        for name, run in modes.items():
            started = time.perf_counter()
            outputs[name] = run(images)
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    tokenizer = processor.tokenizer
    report = {}
    for name in modes:
        tokens = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for _, text in outputs[name]]
        report[name] = {"seconds": seconds[name], "images_per_s": len(images) / seconds[name],
                        "mean_generated_tokens": sum(tokens) / len(tokens),
                        "scored": sum(score is not None for score, _ in outputs[name])}
        print(f"  {name:<14} {report[name]['images_per_s']:8.2f} img/s  (best {seconds[name]:.2f} s, "
              f"{report[name]['mean_generated_tokens']:.1f} tokens/image, "
              f"{report[name]['scored']}/{len(images)} scored)")
    same = sum(a is not None and b is not None and abs(a - b) < 1e-6
               for (a, _), (b, _) in zip(outputs["naive loop"], outputs["batched think"]))
    print(f"  batched think answers equal to the naive loop's: {same}/{len(images)}")
    scorer.close()
    return {"modes": report, "answers_equal": same}


def measure_import(runs: int = 5) -> dict:
    """Best wall time of ``import qponder_plugin`` over fresh interpreters, and whether torch got imported."""
    best, torch_loaded = math.inf, False
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", IMPORT_CHILD], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        best, torch_loaded = min(best, float(out[0])), torch_loaded or out[1] == "True"
    return {"seconds": best, "torch_imported": torch_loaded}


def make_photo(path: Path, size: tuple[int, int]) -> Path:
    """A photo-like JPEG (fractal edges, colour gradients, sensor-like noise) at quality 90, written once."""
    if not path.exists():
        from PIL import Image, ImageChops

        gradient = Image.linear_gradient("L")
        base = Image.merge("RGB", (Image.effect_mandelbrot(size, (-2.2, -1.2, 1.0, 1.2), 64),
                                   gradient.resize(size), gradient.rotate(90).resize(size)))
        noise = Image.merge("RGB", [Image.effect_noise(size, 10) for _ in range(3)])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        ImageChops.add(base, noise, offset=-128).save(partial, "JPEG", quality=90)
        partial.replace(path)
    return path


def peak_rss_mb(model_dir: Path, image: Path, loader: str, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that loads the model and scores ``image`` once in no-think mode."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(model_dir), str(image), loader], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    child = json.loads(out)
    if child["status"] != "ok":
        raise SystemExit(f"scoring {image} ({loader} load) failed in the child: {child['status']}")
    return child["peak_kib"] / 1024


def measure_memory(model_dir: Path, threads: int) -> dict:
    """Extra peak RSS of a 24 MP JPEG over a 512x512 one, through qponder's loader and through a naive PIL load."""
    large = make_photo(BENCH_DIR / "photo-6000x4000.jpg", (6000, 4000))
    small = make_photo(BENCH_DIR / "photo-512x512.jpg", (512, 512))
    peaks = {f"{loader} {name}": peak_rss_mb(model_dir, path, loader, threads)
             for loader in ("qponder", "naive") for name, path in (("512px", small), ("24MP", large))}
    for name, peak in peaks.items():
        print(f"  peak RSS, {name:<13} {peak:8.1f} MB")
    return {"peak_mb": peaks, "extra_mb": peaks["qponder 24MP"] - peaks["qponder 512px"],
            "naive_extra_mb": peaks["naive 24MP"] - peaks["naive 512px"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_dir = Path(model_or_smoke(args.model))
    images = load_images(args.images, args.agiqa)
    source = f"AGIQA-3K JPEGs from {args.agiqa}" if args.agiqa else "synthetic images, 256..768 px sides"
    print(f"model {model_dir}; {len(images)} {source}; batch size {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, best of {args.rounds} round(s)")
    print("throughput:")
    throughput = measure_throughput(args, model_dir, images)
    print("import:")
    imported = measure_import()
    print(f"  import qponder_plugin: {imported['seconds']:.3f} s (best of 5), torch imported: "
          f"{imported['torch_imported']}")
    print("memory (fresh process per image, no-think):")
    memory = measure_memory(model_dir, args.threads)
    rate = {name: mode["images_per_s"] for name, mode in throughput["modes"].items()}
    summary = {
        "batched_think_vs_naive": rate["batched think"] / rate["naive loop"],
        "nothink_vs_batched_think": rate["no-think"] / rate["batched think"],
    }
    print("\nsummary")
    print(f"  batched think vs naive loop : {summary['batched_think_vs_naive']:.1f}x")
    print(f"  no-think vs batched think   : {summary['nothink_vs_batched_think']:.1f}x")
    print(f"  import qponder_plugin       : {imported['seconds']:.3f} s, torch imported: "
          f"{imported['torch_imported']}")
    print(f"  24 MP JPEG extra peak RSS   : {memory['extra_mb']:.0f} MB (naive PIL load: "
          f"{memory['naive_extra_mb']:.0f} MB; target < 300 MB)")
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": settings, "summary": summary,
                                         "throughput": throughput, "import": imported, "memory": memory},
                                        indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
