"""``qponder train run``: distill → SFT → GRPO → export in one command, with the base model and each stage evaluated
on a held-out split and a before/after table at the end.

Every stage leaves a marker only when it is complete (the split file, ``distill.json``, a checkpoint's
``qponder.json``, an eval report), so a rerun of the same command skips what is finished and redoes a stage that
was cut short. The defaults follow the model's size: a small model (the bundled nano) trains fully, with its vision
tower adapted in SFT at a low rate beside the language model, since for it the image domain lives in the tower; a
large one (a 7B) gets LoRA on the language model with the tower frozen, and GRPO generates with vLLM when it is
installed. GRPO keeps the tower frozen for both.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qponder_plugin.default_plugins.commands import with_progress
from qponder_plugin.scorer import Scorer
from qponder_plugin.spec import MODEL_CARD

from .data import MosRecord, MosSet, split_by_group, to_dataset
from .distill import distill, read_distilled
from .evaluate import evaluate
from .export import export
from .trainers import run_grpo, run_sft

SMALL_MODEL_BYTES = 1 << 30  # checkpoints below 1 GiB of weights train fully, tower included
TABLE_METRICS = (("srcc", "SRCC"), ("plcc", "PLCC"))


@dataclass
class RunSettings:
    """What ``run`` does; ``None`` fields take the defaults for the model's size (:func:`size_defaults`)."""

    teacher: str = "measured"
    teacher_model: str | None = None
    tolerance: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    vision_learning_rates: tuple[float, float] | None = None
    rewards: tuple[str, ...] | None = None
    reward_weights: tuple[float, ...] | None = None
    sft_args: dict = field(default_factory=dict)
    grpo_args: dict = field(default_factory=dict)
    max_new_tokens: int = 512


def model_bytes(model: str) -> int | None:
    """Bytes of a local checkpoint's weight files; None for a hub id."""
    folder = Path(model)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) if folder.is_dir() else None


def size_defaults(model: str) -> dict:
    """The settings that suit ``model``: small (weights under 1 GiB, e.g. nano on a CPU) or large (a 7B on a GPU)."""
    size = model_bytes(model)
    if size is not None and size < SMALL_MODEL_BYTES:
        # GRPO's rewards are graded (Gaussian accuracy, rank fidelity), as in the nano recipe: a pass/fail accuracy
        # lets a small policy collapse onto the mean score. Its steps are capped to keep a CPU run short.
        return {"size": "small", "lora": False, "vision_learning_rates": (1e-5, 1e-4),
                "rewards": ("format", "accuracy_gaussian", "consistency", "rank_fidelity"),
                "reward_weights": (0.5, 1.0, 0.25, 1.0),
                "sft_args": {"learning_rate": 1e-4, "num_train_epochs": 2, "lr_scheduler_type": "cosine"},
                "grpo_args": {"learning_rate": 1e-5, "max_steps": 60, "max_completion_length": 160}}
    return {"size": "large", "lora": True, "vision_learning_rates": None,
            "rewards": ("format", "accuracy", "consistency"), "reward_weights": None,
            "sft_args": {"learning_rate": 1e-4, "num_train_epochs": 1},
            "grpo_args": {"learning_rate": 1e-6, "num_train_epochs": 1,
                          "use_vllm": importlib.util.find_spec("vllm") is not None}}


def split(mos_set: MosSet, fraction: float, seed: int) -> tuple[tuple[MosRecord, ...], tuple[MosRecord, ...]]:
    """The file's own train/val split when it has one, else a split by group (no prompt or scene on both sides)."""
    declared = {r.split for r in mos_set}
    if {"train", "val"} <= declared or {"train", "test"} <= declared:
        held = "val" if "val" in declared else "test"
        return (tuple(r for r in mos_set if r.split == "train"), tuple(r for r in mos_set if r.split == held))
    return split_by_group(mos_set, fraction, seed)


class Run:
    """One resumable run into ``out`` (see the module docstring); ``say`` reports progress."""

    def __init__(self, mos_set: MosSet, model: str, out: str | Path, settings: RunSettings, teacher,
                 say: Callable[[str], None] = print):
        self.mos_set, self.model, self.out, self.say = mos_set, model, Path(out), say
        self.teacher = teacher
        defaults = size_defaults(model)
        self.settings = settings
        self.lora = defaults["lora"] if settings.lora is None else settings.lora
        self.vision = settings.vision_learning_rates or (None if self.lora else defaults["vision_learning_rates"])
        self.sft_args = {**defaults["sft_args"], **settings.sft_args}
        self.grpo_args = {**defaults["grpo_args"], **settings.grpo_args}
        self.rewards = settings.rewards or defaults["rewards"]
        self.reward_weights = settings.reward_weights if settings.rewards else defaults["reward_weights"]
        self.size = defaults["size"]
        self.redone = False  # once a stage runs again, every later stage and eval must too
        self.seconds_file = self.out / "seconds.json"  # how long each finished stage and eval took, over reruns
        self.seconds: dict[str, float] = json.loads(self.seconds_file.read_text()) if self.seconds_file.is_file() \
            else {}
        self.out.mkdir(parents=True, exist_ok=True)

    def __call__(self) -> dict:
        """Run (or resume) every stage; return the summary (also written to ``summary.json``)."""
        train, val = self._split()
        reports = {"base": self._eval("base", self.model, val)}
        self._stage("distill", self.out / "distill.json", lambda: self._distill(train))
        sft = self._stage("sft", self.out / "sft" / MODEL_CARD, lambda: self._sft())
        reports["sft"] = self._eval("sft", sft, val)
        grpo = self._stage("grpo", self.out / "grpo" / MODEL_CARD, lambda: self._grpo(sft, train))
        reports["grpo"] = self._eval("grpo", grpo, val)
        final = self._stage("export", self.out / "model" / MODEL_CARD,
                            lambda: export(grpo, self.out / "model", overwrite=True,
                                           card={"metrics": {"before": reports["base"], "after": reports["grpo"]}}))
        summary = {"model": self.model, "size": self.size, "lora": self.lora, "vision_learning_rates": self.vision,
                   "rewards": dict(zip(self.rewards, self.reward_weights or [1.0] * len(self.rewards))),
                   "train": len(train), "val": len(val), "final": str(final), "seconds": self.seconds,
                   "table": [table_row(name, report) for name, report in reports.items()]}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _stage(self, name: str, marker: Path, work: Callable[[], object]):
        """Run ``work`` unless ``marker`` says the stage is done; return the stage's checkpoint (if it makes one)."""
        if marker.is_file() and not self.redone:
            self.say(f"[{name}] done before: {marker}")
            return marker.parent if marker.name == MODEL_CARD else None
        started, self.redone = time.monotonic(), True
        self.say(f"[{name}] started")
        result = work()
        self._took(name, started)
        self.say(f"[{name}] finished in {self.seconds[name]:.0f} s")
        return Path(result) if result is not None else None

    def _took(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 1)
        self.seconds_file.write_text(json.dumps(self.seconds, indent=2) + "\n")

    def _split(self):
        """Train and val records; the split is written once and read back on a rerun, so it never changes."""
        path = self.out / "split.json"
        by_image = {str(r.image): r for r in self.mos_set}
        if path.is_file():
            saved = json.loads(path.read_text())
            return tuple(tuple(by_image[i] for i in saved[side] if i in by_image) for side in ("train", "val"))
        train, val = split(self.mos_set, self.settings.val_fraction, self.settings.seed)
        if not train or not val:
            raise ValueError(f"{self.mos_set.name}: cannot hold out a validation split from {len(self.mos_set)} "
                             "images in one group; give the file a split or group column")
        path.write_text(json.dumps({"train": [str(r.image) for r in train], "val": [str(r.image) for r in val]}))
        return train, val

    def _distill(self, train) -> None:
        stats = distill(self.teacher, train, self.out / "cold.jsonl", tolerance=self.settings.tolerance)
        if not stats.kept + stats.resumed:
            raise ValueError(f"the teacher kept no sample of {len(train)} ({stats.reasons})")
        (self.out / "distill.json").write_text(json.dumps(vars(stats)))

    def _sft(self) -> Path:
        rows = read_distilled(self.out / "cold.jsonl")
        records = [MosRecord(r["image"], r["mos"], r["mos"], None, r["image"]) for r in rows]
        dataset = to_dataset(records, with_completion=[r["completion"] for r in rows])
        return run_sft(self.model, dataset, self.out / "sft", lora=self.lora, lora_r=self.settings.lora_r,
                       lora_alpha=self.settings.lora_alpha, vision_learning_rates=self.vision, args=self.sft_args)

    def _grpo(self, sft: Path, train) -> Path:
        """GRPO on the SFT model with the vision tower frozen: the tower learns the domain in SFT, from the MOS
        itself; GRPO's sampled rewards are too noisy a signal for it (on photos they undid SFT's gain)."""
        weights = list(self.reward_weights) if self.reward_weights else None
        return run_grpo(sft, to_dataset(train), self.out / "grpo", rewards=list(self.rewards), reward_weights=weights,
                        lora=self.lora, lora_r=self.settings.lora_r, lora_alpha=self.settings.lora_alpha,
                        freeze_vision=True, args=self.grpo_args)

    def _eval(self, name: str, model, val) -> dict:
        path = self.out / "eval" / f"{name}.json"
        if path.is_file() and not (self.redone and name != "base"):
            self.say(f"[eval {name}] done before: {path}")
            return json.loads(path.read_text())
        started = time.monotonic()
        with Scorer(model, max_new_tokens=self.settings.max_new_tokens) as scorer:
            report = evaluate(scorer, val, self.out / "eval", name=name, progress=with_progress)
        self._took(f"eval {name}", started)
        self.say(f"[eval {name}] SRCC {report['metrics']['srcc']:.3f} on {len(val)} images "
                 f"in {self.seconds[f'eval {name}']:.0f} s")
        return report


def table_row(name: str, report: Mapping) -> dict:
    """One line of the before/after table: the metrics and the parse-failure rate of one evaluation."""
    metrics = report["metrics"]
    return {"stage": name, **{key: metrics.get(key) for key, _ in TABLE_METRICS},
            "parse_failures": report.get("parse_failure_rate"), "n": report["counts"]["total"]}
