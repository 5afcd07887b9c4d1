"""The five nodes, written once: their inputs and outputs as plain data, and what each one does.

:mod:`.v3` turns them into ``comfy_api.latest`` nodes, :mod:`.v1` into ``NODE_CLASS_MAPPINGS`` classes for a
ComfyUI without the V3 schema. Node ids and input/output names are public API: saved workflows name them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from qponder_plugin import Assessment, QualityGate, list_models
from qponder_plugin.gate import STRATEGIES
from qponder_plugin.gate_file import GateFile, GateFileError, read_gate_file
from qponder_plugin.registry import get_backends
from qponder_plugin.spec import ModelSpec

from . import models
from .host import ComfyHost
from .models import ModelSettings

log = logging.getLogger("qponder_plugin.comfyui")

CATEGORY = "image/quality"
MODEL_TYPE = "QPONDER_MODEL"
WITHOUT_BLOCKER = ("error", "interrupt")
host = ComfyHost()  # the running ComfyUI; tests put a stand-in here


@dataclass(frozen=True)
class In:
    """One input. ``type`` is a ComfyUI type name, or ``COMBO`` with ``choices`` (a tuple or a function)."""

    name: str
    type: str
    tooltip: str
    default: Any = None
    optional: bool = False
    choices: tuple | Callable[[], list] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    force_input: bool = False

    def options(self) -> list:
        return list(self.choices() if callable(self.choices) else self.choices)


@dataclass(frozen=True)
class Out:
    name: str
    type: str
    tooltip: str
    is_list: bool = False


@dataclass
class Result:
    """A node's output values, plus what it shows in the graph (text lines, saved images)."""

    values: tuple = ()
    text: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)

    def ui(self) -> dict | None:
        ui = {}
        if self.text:
            ui["text"] = ["\n".join(self.text)]
        if self.images:
            ui["images"] = self.images
        return ui or None


@dataclass(frozen=True)
class Node:
    id: str
    display_name: str
    description: str
    inputs: tuple[In, ...]
    outputs: tuple[Out, ...]
    run: Callable[..., Result]
    output_node: bool = False
    input_is_list: bool = False
    hidden: tuple[str, ...] = ()  # among "prompt", "extra_pnginfo"


class EmptySideError(RuntimeError):
    """A gate side is empty on a ComfyUI that cannot skip the nodes behind it (no ExecutionBlocker)."""


# --- shared steps ---------------------------------------------------------------------------------------------

def frames_of(images) -> list:
    """The single ``[H,W,C]`` frames of an IMAGE batch."""
    return [images[i] for i in range(images.shape[0])]


def scorer_for(settings: ModelSettings):
    """The cached scorer, with ComfyUI's "Unload models" set to free it."""
    host.on_unload(models.release)
    return models.scorer_for(settings)


def in_batches(settings: ModelSettings, frames: list, score: Callable) -> list:
    """``score(scorer, chunk)`` over ``frames`` one scorer batch at a time, advancing ComfyUI's progress bar per
    image and honouring Cancel between batches."""
    scorer = scorer_for(settings)
    step, results = host.progress(len(frames)), []
    try:
        for begin in range(0, len(frames), scorer.batch_size):
            host.check_interrupted()
            for result in score(scorer, frames[begin:begin + scorer.batch_size]):
                results.append(result)
                step()
    finally:
        models.done_with(settings)
    return results


def assess_frames(settings: ModelSettings, frames: list, *, think: bool) -> list[Assessment]:
    return in_batches(settings, frames, lambda scorer, chunk: scorer.iter_assess(chunk, think=think))


def score_value(assessment: Assessment) -> float:
    """The score, or NaN for an image that could not be scored (never a made-up number)."""
    return assessment.score if assessment.ok else math.nan


def explanation(assessment: Assessment) -> str:
    return (assessment.reasoning or "") if assessment.ok else f"[{assessment.status}] {assessment.error}"


def line(index: int, assessment: Assessment, verdict: str = "") -> str:
    score = f"{assessment.score:.2f}" if assessment.ok else assessment.status
    text = " ".join(explanation(assessment).split())
    return f"#{index + 1} {score}{f' {verdict}' if verdict else ''}{f' — {text}' if text else ''}"


# --- the nodes ------------------------------------------------------------------------------------------------

def model_choices() -> list[str]:
    return [info.alias for info in list_models()] + list(host.llm_folders())


def load_model(model: str, custom_model: str, backend: str, device: str, think: bool,
               keep_loaded: bool) -> Result:
    name = custom_model.strip() or host.llm_folders().get(model, model)
    settings = ModelSettings(None if name == "nano" else name, backend, device, think, keep_loaded)
    if keep_loaded:
        scorer_for(settings)  # load now, so a bad model fails at this node (else the nodes load it when they run)
    return Result((settings,))


def assess(images, model: ModelSettings | None = None) -> Result:
    settings = model or models.DEFAULT
    results = assess_frames(settings, frames_of(images), think=settings.think)
    return Result(([score_value(a) for a in results], [explanation(a) for a in results]),
                  text=[line(i, a) for i, a in enumerate(results)])


def from_gate_file(path: str, model: ModelSettings | None) -> tuple[ModelSettings, GateFile]:
    """The model settings and the gate a gate file gives: the connected model when the file was calibrated for it
    (else an error naming both), or, with none connected, the file's own model and profile."""
    gate_file = read_gate_file(os.path.expanduser(path))
    if model is None:
        return ModelSettings(gate_file.model, profile=gate_file.profile), gate_file
    spec = ModelSpec.resolve(model.model, profile=model.profile)
    problem = gate_file.mismatch(spec, spec.profile.name)
    if problem:
        raise GateFileError(f"QPonderGate: {gate_file.source}: {problem} (connect no model to use the file's)")
    return model, gate_file


def gate(images, threshold: float, strategy: str, without_blocker: str, model: ModelSettings | None = None,
         gate_file: str = "") -> Result:
    settings, margin, notes = model or models.DEFAULT, 0.25, []
    if gate_file.strip():
        settings, calibrated = from_gate_file(gate_file.strip(), model)
        threshold, strategy, margin = calibrated.threshold, calibrated.strategy, calibrated.margin
        notes.append(f"gate file {gate_file.strip()}: threshold {threshold:g}, strategy {strategy}, model "
                     f"{calibrated.model} (the threshold and strategy inputs are not used)")
    verdicts = in_batches(settings, frames_of(images), lambda scorer, chunk: (
        verdict for _, verdict in QualityGate(threshold, scorer=scorer, strategy=strategy,
                                              margin=margin).verdicts(chunk)))
    passed = [i for i, v in enumerate(verdicts) if v.passed]
    rejected = [i for i, v in enumerate(verdicts) if not v.passed]
    text = notes + [line(i, v.assessment, ("passed" if v.passed else "rejected") + (f" ({v.note})" if v.note else ""))
                    for i, v in enumerate(verdicts)]
    scores = [score_value(v.assessment) for v in verdicts]

    def side(indices: list[int], name: str):
        if indices:
            return images[indices], [scores[i] for i in indices]
        blocker = host.blocker()
        if blocker is not None:
            return blocker, blocker
        message = (f"QPonderGate: no image {name} the threshold {threshold} ({len(passed)} passed, "
                   f"{len(rejected)} rejected), and this ComfyUI cannot skip the nodes behind an empty output "
                   f"(ComfyUI 0.3 and later can). Verdicts:\n" + "\n".join(text))
        if without_blocker == "interrupt":
            log.warning("%s\nInterrupting the prompt (without_blocker=interrupt).", message)
            host.interrupt()
        raise EmptySideError(message + "\nSet without_blocker to 'interrupt' to end such a prompt quietly.")

    passed_images, passed_scores = side(passed, "passed")
    rejected_images, rejected_scores = side(rejected, "failed")
    return Result((passed_images, rejected_images, scores, len(passed), len(rejected), passed_scores,
                   rejected_scores), text=text)


def rank(images, keep: str, k: int, fraction: float, model: ModelSettings | None = None) -> Result:
    settings = model or models.DEFAULT
    results = assess_frames(settings, frames_of(images), think=settings.think)
    scored = [i for i, a in enumerate(results) if a.ok]
    if not scored:
        raise ValueError("QPonderRank: no image of the batch could be scored:\n"
                         + "\n".join(line(i, a) for i, a in enumerate(results)))
    count = k if keep == "top_k" else math.ceil(fraction * len(results))
    order = sorted(scored, key=lambda i: -results[i].score)[:max(1, count)]
    return Result((images[order], [results[i].score for i in order], [explanation(results[i]) for i in order]),
                  text=[line(i, results[i], f"rank {r + 1}") for r, i in enumerate(order)])


def save_image(images: list, filename_prefix: list[str], scores: list[float] | None = None,
               reasoning: list[str] | None = None, model: list[ModelSettings] | None = None, prompt=None,
               extra_pnginfo=None) -> Result:
    frames = [frame for batch in images for frame in frames_of(batch)]
    if scores is None:
        settings = model[0] if model else models.DEFAULT
        results = assess_frames(settings, frames, think=settings.think)
        scores, reasoning = [score_value(a) for a in results], [explanation(a) for a in results]
    for name, values in (("scores", scores), ("reasoning", reasoning)):
        if values is not None and len(values) != len(frames):
            raise ValueError(f"QPonderSaveImage: {len(frames)} images but {len(values)} {name}: connect the "
                             f"{name} that belong to these images (for a gate: passed_scores or rejected_scores)")
    saved, text = [], []
    first = frames[0]
    folder, stem, counter, subfolder = host.save_path(filename_prefix[0], first.shape[1], first.shape[0])
    with_metadata = host.metadata_enabled()
    for index, frame in enumerate(frames):
        pixels = np.clip(255.0 * frame.cpu().numpy(), 0, 255).astype(np.uint8)
        info = PngInfo()
        if with_metadata and prompt is not None:
            info.add_text("prompt", json.dumps(prompt))
        for key, value in (extra_pnginfo or {}).items() if with_metadata else ():
            info.add_text(key, json.dumps(value))
        why = reasoning[index] if reasoning is not None else ""
        if math.isnan(scores[index]):
            info.add_text("qponder_error", why or "not scored")
        else:
            info.add_text("qponder_score", f"{scores[index]:.4f}")
            if why:
                info.add_itxt("qponder_reasoning", why)
        name = f"{stem.replace('%batch_num%', str(index))}_{counter + index:05}_.png"
        Image.fromarray(pixels).save(os.path.join(folder, name), pnginfo=info, compress_level=4)
        saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
        text.append(f"{name}: {scores[index]:.2f}")
    return Result(images=saved, text=text)


MODEL_INPUT = In("model", MODEL_TYPE, "From QPonder Model Loader; without it, the bundled offline nano model.",
                 optional=True)

NODES = (
    Node("QPonderModelLoader", "QPonder Model Loader",
         "Load a quality model once for every node and prompt (freed by ComfyUI's Unload models).",
         (In("model", "COMBO", "The bundled nano model, a known checkpoint (downloaded on first use), or a "
             "folder under models/LLM/.", default="nano", choices=model_choices),
          In("custom_model", "STRING", "A hub id or checkpoint folder; overrides model when set.", default=""),
          In("backend", "COMBO", "Where the model runs.", default="transformers",
             choices=lambda: list(get_backends())),
          In("device", "COMBO", "The transformers backend's device.", default="auto",
             choices=("auto", "cpu", "cuda", "mps")),
          In("think", "BOOLEAN", "Reason before scoring (slower) for Assess, Rank and Save.", default=True),
          In("keep_loaded", "BOOLEAN", "Keep the model in memory between nodes and prompts.", default=True)),
         (Out("qponder_model", MODEL_TYPE, "The model settings; nodes load the model from a shared cache."),),
         load_model),
    Node("QPonderAssess", "QPonder Assess",
         "Score every image of a batch (1-5) with the model's reasoning.",
         (In("images", "IMAGE", "The images to score."), MODEL_INPUT),
         (Out("scores", "FLOAT", "One score per image (NaN for an image that could not be scored).", True),
          Out("reasoning", "STRING", "One reasoning text (or error) per image.", True)),
         assess, output_node=True),
    Node("QPonderGate", "QPonder Gate",
         "Split a batch into the images that reach the threshold and those that do not. An empty side does "
         "not run the nodes behind it; ComfyUI before 0.3 cannot skip them: see without_blocker.",
         (In("images", "IMAGE", "The images to judge."),
          In("threshold", "FLOAT", "The lowest score (1-5) that passes.", default=3.0, min=1.0, max=5.0, step=0.05),
          In("strategy", "COMBO", "cascade: fast score, reasoning near the threshold; fast: no reasoning; think: "
             "always reason.", default="cascade", choices=STRATEGIES),
          In("without_blocker", "COMBO", "On a ComfyUI without ExecutionBlocker, an empty side raises a clear "
             "error, or interrupts the prompt.", default="error", choices=WITHOUT_BLOCKER),
          MODEL_INPUT,
          In("gate_file", "STRING", "A gate file from `qponder calibrate` (a path; relative to where ComfyUI "
             "runs): its threshold, strategy and model replace the inputs above; a connected model must be the "
             "one it was calibrated for.", default="", optional=True)),
         (Out("passed", "IMAGE", "The images that reached the threshold."),
          Out("rejected", "IMAGE", "The images that did not (or could not be scored)."),
          Out("scores", "FLOAT", "Every image's score, in input order.", True),
          Out("passed_count", "INT", "How many passed."),
          Out("rejected_count", "INT", "How many were rejected."),
          Out("passed_scores", "FLOAT", "The passed images' scores (for QPonder Save Image).", True),
          Out("rejected_scores", "FLOAT", "The rejected images' scores.", True)),
         gate, output_node=True),
    Node("QPonderRank", "QPonder Rank",
         "Keep the best images of a batch, best first.",
         (In("images", "IMAGE", "The images to rank."),
          In("keep", "COMBO", "Keep k images, or a fraction of the batch (at least one).", default="top_k",
             choices=("top_k", "top_fraction")),
          In("k", "INT", "How many to keep (top_k).", default=4, min=1, max=4096, step=1),
          In("fraction", "FLOAT", "Which part to keep (top_fraction).", default=0.25, min=0.01, max=1.0,
             step=0.01),
          MODEL_INPUT),
         (Out("ranked", "IMAGE", "The kept images, best first."),
          Out("scores", "FLOAT", "Their scores, best first.", True),
          Out("reasoning", "STRING", "Their reasoning, best first.", True)),
         rank),
    Node("QPonderSaveImage", "QPonder Save Image",
         "Save images as PNG, like Save Image, with the score and reasoning in each file's metadata "
         "(qponder_score, qponder_reasoning). Without scores connected, it scores the images itself.",
         (In("images", "IMAGE", "The images to save."),
          In("filename_prefix", "STRING", "File name prefix; may hold ComfyUI's %date% style fields.",
             default="qponder"),
          In("scores", "FLOAT", "The images' scores (e.g. a gate's passed_scores).", optional=True,
             force_input=True),
          In("reasoning", "STRING", "The images' reasoning.", optional=True, force_input=True),
          MODEL_INPUT),
         (), save_image, output_node=True, input_is_list=True, hidden=("prompt", "extra_pnginfo")),
)
