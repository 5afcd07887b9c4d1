"""GRPO step time of our ``build_grpo`` trainer against a bare ``trl.GRPOTrainer``, side by side in one run.

Both trainers get the same checkpoint, the same LoRA config, the same ``GRPOConfig`` values (checked field by
field), the same dataset rows and the same reward callables: ours is what ``qponder train grpo`` runs, the bare one
is built here by hand (``AutoModelForImageTextToText``/``AutoProcessor``, images decoded by a plain
``with_transform``). So the ratio ours/bare is our wrapper's overhead (target <= 1.1x). A reward with ``bind``
(``consistency``) is bound to each trainer: the bare one gets its own copy, since a bound reward reads the model
of the trainer it is bound to. ``consistency`` costs one extra text-only forward per completion (batched) by
design; add it with ``--rewards format,accuracy,consistency`` to measure it.

Interleaving: trl has no public single-step call, so each trainer runs its ordinary ``train()`` in its own thread,
and a ``TrainerCallback`` lets only one of them run at a time, handing the turn over at every ``on_step_begin``
(A, B, A, B, ...): machine noise hits both alike, and they never compete for the CPU. A step's wall time runs from
its ``on_step_begin`` to the next one (or ``on_train_end``), so it also covers logging and fetching the next batch
(where the images get decoded), which happen outside ``on_step_begin``..``on_step_end``. The first step of each is
a warm-up and is not counted. The global RNG (which sampling and LoRA dropout draw from) is reseeded with the step
number at every step, so both trainers sample the same completions and do the same work: without it, whichever
went first drew other samples and, in our runs, took ~4% longer. The tokens/completion column shows that they match.

    .venv/bin/python benchmarks/grpo_step.py                                         # smoke model, 6 steps each
    .venv/bin/python benchmarks/grpo_step.py --rewards format,accuracy,consistency
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
from pathlib import Path

from smoke_model import MODEL_HELP, model_or_smoke

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".cache" / "bench" / "grpo"
WARMUP = 1
OURS, BARE = "ours (build_grpo)", "bare GRPOTrainer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--rewards", default="format,accuracy",
                        help="comma-separated registered rewards (default format,accuracy; consistency adds one "
                             "text-only forward per completion by design)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per trainer, after 1 warm-up step")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (MOS = the smoke model's rule)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared CPU, more threads spin-wait on each other "
                             "and swamp the ratio; 0: torch's choice)")
    return parser.parse_args(argv)



def make_records(count: int) -> list:
    """Solid images of evenly spread brightness, written once, with MOS = ``brightness_score``."""
    from qponder_plugin.training.data import MosRecord
    from smoke_model import brightness_score, solid_image

    folder = BENCH_DIR / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        brightness, path = (i + 0.5) / count, folder / f"solid-{i:03d}.png"
        if not path.exists():
            solid_image(brightness, seed=i).save(path)
        mos = brightness_score(brightness)
        records.append(MosRecord(image=str(path), mos=mos, raw_mos=mos, std=None, group=str(path)))
    return records


def plain_decode(batch: dict) -> dict:
    """The bare trainer's transform: PIL decode; the path stays as ``image_path`` for path-keyed rewards."""
    from PIL import Image

    out = {key: value for key, value in batch.items() if key != "image"}
    return {**out, "images": [[Image.open(path).convert("RGB")] for path in batch["image"]],
            "image_path": batch["image"]}


class Turns:
    """Lets trainers running in threads take their steps strictly in turn (in the order given)."""

    def __init__(self, names: list[str]):
        self.names, self.turn, self.done, self.condition = list(names), names[0], set(), threading.Condition()

    def wait(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.turn == name)

    def pass_on(self, name: str, finished: bool = False) -> None:
        """Give the turn to the next unfinished trainer after ``name`` (``name`` itself if it is the last one)."""
        with self.condition:
            if finished:
                self.done.add(name)
            at = self.names.index(name) + 1
            self.turn = next((n for n in self.names[at:] + self.names[:at] if n not in self.done), None)
            self.condition.notify_all()


def step_timer(name: str, turns: Turns):
    from transformers import TrainerCallback, set_seed

    class StepTimer(TrainerCallback):
        """Wall time of each step (``on_step_begin`` to the next one), handing the turn over in between; the RNG is
        reseeded with the step number before each step."""

        def __init__(self):
            self.seconds, self.started = [], None

        def on_step_begin(self, args, state, control, **__):
            if self.started is not None:
                self.seconds.append(time.perf_counter() - self.started)
                turns.pass_on(name)
                turns.wait(name)
            set_seed(args.seed + state.global_step)
            self.started = time.perf_counter()

        def on_train_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.started)

    return StepTimer()


def run_interleaved(trainers: dict, threads: int) -> dict[str, list[float]]:
    """Train all trainers in turn, one step each; returns each one's step seconds, warm-up dropped."""
    import torch
    from transformers import PrinterCallback

    turns, errors = Turns(list(trainers)), {}
    timers = {name: step_timer(name, turns) for name in trainers}

    def run(name: str) -> None:
        if threads:
            torch.set_num_threads(threads)
        try:
            turns.wait(name)
            trainers[name].train()
        except BaseException as exc:  # re-raised in the main thread; the other trainer still finishes
            errors[name] = exc
        finally:
            turns.pass_on(name, finished=True)

    for name, trainer in trainers.items():
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(timers[name])
    workers = [threading.Thread(target=run, args=(name,)) for name in trainers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for exc in errors.values():
        raise exc
    return {name: timer.seconds[WARMUP:] for name, timer in timers.items()}


def build_trainers(model_dir: Path, records: list, rewards: list[str], settings: dict) -> dict:
    from qponder_plugin.training.data import to_dataset
    from qponder_plugin.training.registry import get_rewards
    from qponder_plugin.training.trainers import build_grpo, lora_config, trainer_defaults
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    ours, _ = build_grpo(model_dir, to_dataset(records), BENCH_DIR / "ours", rewards=rewards, args=settings)
    registry = get_rewards()
    reward_funcs = [copy.copy(registry[name]) if hasattr(registry[name], "bind") else registry[name]
                    for name in rewards]
    config = GRPOConfig(output_dir=str(BENCH_DIR / "bare"), reward_weights=[1.0] * len(rewards),
                        **{**trainer_defaults(), **settings})
    bare = GRPOTrainer(model=AutoModelForImageTextToText.from_pretrained(model_dir, dtype=ours.model.dtype),
                       reward_funcs=reward_funcs, args=config,
                       train_dataset=to_dataset(records).with_transform(plain_decode),
                       processing_class=AutoProcessor.from_pretrained(model_dir), peft_config=lora_config())
    for reward in reward_funcs:
        if hasattr(reward, "bind"):
            reward.bind(bare)
    differ = {key for key, value in ours.args.to_dict().items()
              if bare.args.to_dict().get(key) != value} - {"output_dir", "logging_dir"}
    if differ:
        raise SystemExit(f"the two GRPOConfigs differ in {sorted(differ)}")
    return {OURS: ours, BARE: bare}


def log_mean(trainer, key: str) -> float:
    """Mean of a logged metric over the timed steps."""
    values = [entry[key] for entry in trainer.state.log_history if key in entry][WARMUP:]
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(model_or_smoke(args.model))
    rewards = [name.strip() for name in args.rewards.split(",") if name.strip()]
    settings = {"max_completion_length": 96, "num_generations": 4, "per_device_train_batch_size": 8,
                "temperature": 1.0, "beta": 0.04, "max_steps": WARMUP + args.steps, "disable_tqdm": True}
    trainers = build_trainers(model_dir, make_records(args.images), rewards, settings)
    print(f"model {model_dir}; {args.images} synthetic images; rewards {','.join(rewards)}; "
          f"max_completion_length {settings['max_completion_length']}, {settings['num_generations']} generations, "
          f"batch {settings['per_device_train_batch_size']}; {WARMUP} warm-up + {args.steps} timed steps each, "
          f"interleaved; {torch.get_num_threads()} torch threads", flush=True)
    seconds = run_interleaved(trainers, args.threads)
    print(f"{'step seconds':<18} {'median':>7} {'mean':>7}  {'tokens/completion':>17}  steps")
    for name, trainer in trainers.items():
        steps = " ".join(f"{s:.2f}" for s in seconds[name])
        print(f"  {name:<18} {statistics.median(seconds[name]):7.2f} {statistics.mean(seconds[name]):7.2f}  "
              f"{log_mean(trainer, 'completions/mean_length'):17.1f}  {steps}")
    ours, bare = seconds[OURS], seconds[BARE]
    print(f"ours / bare: median {statistics.median(ours) / statistics.median(bare):.3f}x, "
          f"mean {statistics.mean(ours) / statistics.mean(bare):.3f}x (target <= 1.1x)")
    means = ", ".join(f"{name} {log_mean(trainers[OURS], f'rewards/{name}/mean'):.3f}" for name in rewards)
    print(f"our trainer's reward means over the timed steps: {means}")


if __name__ == "__main__":
    main()
