"""GRPO rewards: plain trl reward callables, registered through the ``register_rewards`` hook.

Each takes ``completions`` (chat messages or strings) plus the dataset columns as keyword arguments (``mos`` on
the 1–5 scale, ``image``) and returns one float per completion. A completion that does not parse earns 0, never a
made-up score.

- ``format``: ``<think>…</think><answer>x</answer>`` with a parseable score, and nothing after it; the ``<think>``
  may be the chat template's (Qwen3-VL Thinking and Qwen3.5 open it, so their answers start with the reasoning).
- ``accuracy``: 1 when ``|pred − mos| < threshold`` (0.35, the peers' value), else 0.
- ``accuracy_gaussian``: ``exp(−(pred − mos)² / 2σ²)``, σ = 0.5: a dense signal for small batches.
- ``consistency`` (the Q-Ponder idea): the policy model reads its own reasoning *without the image* and scores it
  (expected first digit under its token distribution, after a no-think prompt as the scorer writes it); the reward
  is ``exp(−(s_reasoning − s_answer)² / 2σ²)``, so the reasoning has to justify the answer instead of decorating it.
- ``rank_fidelity`` (VisualQuality-R1 style): for each other image in the batch, the probability that this
  completion ranks its image above the other (Thurstone, ``Φ((s − μ_b) / sqrt(σ_b² + γ))``) is compared with the
  MOS order by the fidelity measure ``sqrt(p·t) + sqrt((1−p)(1−t))``; the reward is the mean over other images.
- ``grounding``: balanced agreement of the reasoning with the ``measured`` teacher's aspects (sharpness, noise,
  exposure, contrast, colour, artifacts), measured at the policy's input size as ``distill`` measures it. Each
  aspect stated as the teacher finds it earns ``1 / (k · share of the train images with that finding)`` (k: the
  aspect's findings), so a true description averages 1 over the train set while stating each aspect's most common
  finding everywhere averages about ``1/k``; an aspect left unstated, or stated two ways, earns 0, and a finding
  no train image has counts 1.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter, defaultdict

from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.images import load_image
from qponder_plugin.profile import Profile
from qponder_plugin.scoring import digit_distribution

from .describer import FINDINGS, findings, measure, stated

_FORMAT = re.compile(r"\s*(?:<think>)?(?:(?!</?think>).)+</think>\s*<answer>.+?</answer>\s*", re.S)

CONSISTENCY_PROMPT = ("Here is an assessment of an image's visual quality, written by an expert who saw the image:\n"
                      "{reasoning}\n\nFrom this assessment alone, give the image's quality score from 1 (very poor) "
                      "to 5 (excellent) inside <answer> </answer> tags.")


def completion_text(completion) -> str:
    """The text of a trl completion or prompt (a string, or a list of chat messages): its last message's."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if isinstance(part, dict))  # Arrow: image text None


def predicted_score(text: str, profile: Profile = QPONDER) -> float | None:
    """The answer's score on 1–5, or None when it does not parse."""
    parsed = profile.parse(text)
    return None if parsed.value is None else profile.to_scale(parsed.value)[0]


def format_reward(completions, **_) -> list[float]:
    texts = [completion_text(c) for c in completions]
    return [float(bool(_FORMAT.fullmatch(t)) and predicted_score(t) is not None) for t in texts]


format_reward.__name__ = "format"


class AccuracyReward:
    """Threshold (``sigma=None``) or Gaussian accuracy against the MOS."""

    def __init__(self, threshold: float = 0.35, sigma: float | None = None, name: str = "accuracy"):
        self.threshold, self.sigma, self.__name__ = threshold, sigma, name

    def __call__(self, completions, mos, **_) -> list[float]:
        rewards = []
        for completion, target in zip(completions, mos):
            score = predicted_score(completion_text(completion))
            if score is None:
                rewards.append(0.0)
            elif self.sigma is None:
                rewards.append(float(abs(score - target) < self.threshold))
            else:
                rewards.append(math.exp(-((score - target) ** 2) / (2 * self.sigma ** 2)))
        return rewards


class ConsistencyReward:
    """Agreement between the answer and the policy's own score for the reasoning text alone (no image)."""

    __name__ = "consistency"

    def __init__(self, sigma: float = 0.5, profile: Profile = QPONDER):
        self.sigma, self.profile = sigma, profile
        self.trainer = self.processor = self.tokenizer = self.groups = None

    def bind(self, trainer) -> None:
        from qponder_plugin.default_plugins.transformers_backend import readout_token_ids

        self.trainer, self.processor = trainer, trainer.processing_class
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.groups = readout_token_ids(self.tokenizer, string.digits)

    def reasoning_scores(self, reasonings: list[str]) -> list[float]:
        """The policy's expected first-digit score for each reasoning text, read in one text-only forward pass."""
        import torch

        if not reasonings:
            return []
        from qponder_plugin.backend import Request
        from qponder_plugin.default_plugins.transformers_backend import chat_text, readout_logprobs

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        prompts = [chat_text(self.processor, Request(None, CONSISTENCY_PROMPT.format(reasoning=r),
                                                     prefix=self.profile.answer_prefix)) for r in reasonings]
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        try:
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side
        with torch.inference_mode():
            logits = model(**batch.to(model.device)).logits[:, -1]
        low, high = self.profile.score_range
        digits = sorted(self.groups)
        scores = []
        for row in readout_logprobs(logits, self.groups).tolist():
            dist = digit_distribution(dict(zip(digits, row)), range(math.floor(low), math.floor(high) + 1))
            scores.append(self.profile.to_scale(sum(d * p for d, p in dist.items()))[0] if dist else float("nan"))
        return scores

    def __call__(self, completions, **_) -> list[float]:
        if self.tokenizer is None:
            raise RuntimeError("the consistency reward needs the trainer: call reward.bind(trainer) first")
        texts = [completion_text(c) for c in completions]
        parsed = [self.profile.parse(t) for t in texts]
        usable = [i for i, p in enumerate(parsed) if p.value is not None and p.reasoning]
        rewards = [0.0] * len(texts)
        for i, reasoning_score in zip(usable, self.reasoning_scores([parsed[i].reasoning for i in usable])):
            answer = self.profile.to_scale(parsed[i].value)[0]
            if not math.isnan(reasoning_score):
                rewards[i] = math.exp(-((reasoning_score - answer) ** 2) / (2 * self.sigma ** 2))
        return rewards


class RankFidelityReward:
    """Thurstone-model ranking fidelity against the other images of the batch."""

    __name__ = "rank_fidelity"

    def __init__(self, gamma: float = 0.1):
        self.gamma = gamma

    def __call__(self, completions, mos, image_path, **_) -> list[float | None]:
        scores = [predicted_score(completion_text(c)) for c in completions]
        by_image: dict[str, list[float]] = defaultdict(list)
        target: dict[str, float] = {}
        for key, score, m in zip(map(str, image_path), scores, mos):
            target[key] = m
            if score is not None:
                by_image[key].append(score)
        if len(target) < 2:
            return [None] * len(completions)  # nothing to rank against: trl treats None as "no reward"
        stats = {k: (sum(v) / len(v), sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)) for k, v in by_image.items()}
        rewards: list[float | None] = []
        for key, score in zip(map(str, image_path), scores):
            others = [k for k in stats if k != key]
            if score is None or not others:
                rewards.append(0.0 if score is None else None)
                continue
            total = 0.0
            for other in others:
                mean, var = stats[other]
                p = 0.5 * (1 + math.erf((score - mean) / math.sqrt(2 * (var + self.gamma))))
                t = 1.0 if target[key] > target[other] else 0.0 if target[key] < target[other] else 0.5
                total += math.sqrt(p * t) + math.sqrt((1 - p) * (1 - t))
            rewards.append(total / len(others))
        return rewards


class GroundingReward:
    """Balanced agreement of the reasoning's attribute statements with the ``measured`` teacher's findings."""

    __name__ = "grounding"

    def __init__(self):
        self.max_pixels, self.found, self.weights = None, {}, None

    def bind(self, trainer) -> None:
        from qponder_plugin.default_plugins.transformers_backend import pixel_budget

        self.max_pixels, self.found = pixel_budget(trainer.processing_class.image_processor), {}
        self.fit(trainer.train_dataset.with_format(None)["image"])

    def fit(self, paths) -> None:
        """Weigh each aspect's findings by how rare they are among the images at ``paths`` (the train set)."""
        found = [self.measured(str(path)) for path in dict.fromkeys(paths)]
        self.weights = {}
        for aspect in FINDINGS:
            counts = Counter(f[aspect] for f in found)
            self.weights[aspect] = {index: len(found) / (len(counts) * n) for index, n in counts.items()}

    def measured(self, path: str) -> dict[str, int]:
        """The teacher's findings in the image at ``path`` (measured once per image)."""
        if path not in self.found:
            self.found[path] = findings(measure(load_image(path, max_pixels=self.max_pixels)))
        return self.found[path]

    def __call__(self, completions, image_path, **_) -> list[float]:
        if self.weights is None:
            raise RuntimeError("the grounding reward weighs findings by the train set: call reward.bind(trainer)")
        rewards = []
        for completion, path in zip(completions, map(str, image_path)):
            said, truth = stated(completion_text(completion)), self.measured(path)
            rewards.append(sum(self.weights[aspect].get(index, 1.0) for aspect, index in truth.items()
                               if said[aspect] == [index]) / len(truth))
        return rewards


def builtin_rewards() -> dict:
    return {"format": format_reward, "accuracy": AccuracyReward(),
            "accuracy_gaussian": AccuracyReward(sigma=0.5, name="accuracy_gaussian"),
            "consistency": ConsistencyReward(), "rank_fidelity": RankFidelityReward(),
            "grounding": GroundingReward()}
