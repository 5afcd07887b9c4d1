"""Model profiles: how to prompt a model family and how to read its answer.

A profile holds the prompts for think and no-think modes, the answer parser, the native score range (mapped
onto 1–5), and the assistant-turn prefix after which the score's first digit is the next token (used by the
no-think probability mode). Profiles are registered through the ``register_profiles`` hook.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType

from .hookspecs import hookimpl
from .parsing import ParsedAnswer, parse_answer


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    think_prompt: str
    nothink_prompt: str
    answer_prefix: str = "<answer>"
    score_range: tuple[float, float] = (1.0, 5.0)
    system_prompt: str | None = None
    match: tuple[str, ...] = ()  # case-insensitive substrings of a model id that select this profile
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # alias -> hub id of public weights
    parse: Callable[[str], ParsedAnswer] = parse_answer

    def prompt(self, think: bool) -> str:
        return self.think_prompt if think else self.nothink_prompt

    def to_scale(self, value: float) -> tuple[float, bool]:
        """Map a native score onto 1–5; out-of-range values are clamped and flagged."""
        low, high = self.score_range
        clamped = min(max(value, low), high)
        return 1.0 + 4.0 * (clamped - low) / (high - low), clamped != value


_RATING = ("What is your overall rating on the quality of this picture? The rating should be a float between 1 "
           "and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing "
           "excellent quality.")

QPONDER = Profile(
    name="qponder",
    description="Q-Ponder format produced by `qponder train`: <think>reasoning</think><answer>x.xx</answer>.",
    think_prompt=("Assess the visual quality of this image. Reason about sharpness, noise, exposure, colour, "
                  "artifacts, composition and content inside <think> </think> tags, then give one quality score "
                  "from 1 (very poor) to 5 (excellent), with two decimals, inside <answer> </answer> tags."),
    nothink_prompt=("Assess the visual quality of this image. Give only one quality score from 1 (very poor) to "
                    "5 (excellent), with two decimals, inside <answer> </answer> tags."),
    match=("qponder", "q-ponder"),
)

VISUALQUALITY_R1 = Profile(
    name="visualquality-r1",
    description="VisualQuality-R1 (Wu et al., 2025): its published thinking and non-thinking prompts.",
    think_prompt=(f"You are doing the image quality assessment task. Here is the question: {_RATING} First output "
                  "the thinking process in <think> </think> tags and then output the final answer with only one "
                  "score in <answer> </answer> tags."),
    nothink_prompt=(f"You are doing the image quality assessment task. Here is the question: {_RATING} Please only "
                    "output the final answer with only one score in <answer> </answer> tags."),
    match=("visualquality-r1",),
    checkpoints=MappingProxyType({"visualquality-r1-7b": "TianheWu/VisualQuality-R1-7B"}),
)

Q_INSIGHT = Profile(
    name="q-insight",
    description='Q-Insight (Li et al., 2025): reasoning, then <answer>{"rating": x}</answer>.',
    think_prompt=(f"{_RATING} First output the thinking process in <think> </think> tags and then output the final "
                  'answer in <answer> </answer> tags as JSON: {"rating": score}.'),
    nothink_prompt=(f'{_RATING} Output only the final answer in <answer> </answer> tags as JSON: {{"rating": score}}.'),
    answer_prefix='<answer>{"rating": ',
    match=("q-insight",),
    checkpoints=MappingProxyType({"q-insight": "ByteDance/Q-Insight"}),
)

QWEN_INSTRUCT = Profile(
    name="qwen2.5-vl-instruct",
    description="Zero-shot prompting of any Qwen2.5-VL chat model (the fallback for unknown checkpoints).",
    think_prompt=(f"{_RATING} First describe the quality problems you see (blur, noise, exposure, colour, "
                  "artifacts) inside <think> </think> tags, then give only the score inside <answer> </answer> tags."),
    nothink_prompt=f"{_RATING} Give only the score inside <answer> </answer> tags.",
    match=("qwen2.5-vl", "qwen2_5_vl"),
    checkpoints=MappingProxyType({"qwen2.5-vl-7b-instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
                                  "qwen2.5-vl-3b-instruct": "Qwen/Qwen2.5-VL-3B-Instruct"}),
)

DEFAULT_PROFILE = QWEN_INSTRUCT.name


@hookimpl
def register_profiles(register):
    for profile in (QPONDER, VISUALQUALITY_R1, Q_INSIGHT, QWEN_INSTRUCT):
        register(profile)


@cache
def get_profiles() -> Mapping[str, Profile]:
    """Every registered profile by name (built-ins first; a plugin may not silently replace one)."""
    from .plugins import gather

    return gather("register_profiles", key=lambda profile: profile.name)


def get_profile(name: str) -> Profile:
    profiles = get_profiles()
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


def profile_for_model(model_id: str) -> Profile:
    """The profile whose ``match`` fits ``model_id`` best (longest match), else the zero-shot default."""
    lowered = model_id.lower()
    best = max(((len(m), p) for p in get_profiles().values() for m in p.match if m in lowered),
               key=lambda pair: pair[0], default=None)
    return best[1] if best else get_profile(DEFAULT_PROFILE)
