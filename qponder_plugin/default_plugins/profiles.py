"""The built-in model profiles: the format we train and the public checkpoints' own prompts."""

from __future__ import annotations

from types import MappingProxyType

from ..hookspecs import hookimpl
from ..profile import Profile

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


@hookimpl
def register_profiles(register):
    for profile in (QPONDER, VISUALQUALITY_R1, Q_INSIGHT, QWEN_INSTRUCT):
        register(profile)
