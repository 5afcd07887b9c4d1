"""The built-in model profiles: the format we train and the public checkpoints' own prompts."""

from __future__ import annotations

from functools import partial
from types import MappingProxyType

from ..hookspecs import hookimpl
from ..parsing import parse_answer, parse_json_answer, parse_level_answer
from ..profile import Profile
from . import peer_prompts

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

# The 2026 generation. Each keeps its own repository's prompt and answer form; no-think prefixes end where that form
# puts the score's first digit.
_QUESTION = "What is your overall rating on the quality of this picture?"
_MR_IQA = f"{_RATING} Please only output the final answer with one score in <answer> </answer> tags."
_Q_ALIGN_QUESTION = "How would you rate the quality of this image?"
_EVOQUALITY = (f"You are doing the image quality assessment task. Here is the question: {_RATING} You FIRST think "
               "about the reasoning process as an internal monologue and then provide the final answer. The final "
               "answer MUST BE put in \\boxed{}.")

MR_IQA = Profile(
    name="mr-iqa",
    description=("MR-IQA (Qwen3-VL-2B): its card's no-reasoning prompt and <answer>3.74</answer>. "
                 "The released weights were trained without reasoning, so think mode asks the same."),
    think_prompt=_MR_IQA,
    nothink_prompt=_MR_IQA,
    system_prompt=("You are an image quality assessment assistant. Output only the final score in <answer> </answer> "
                   "tags."),
    match=("mr-iqa",),
    checkpoints=MappingProxyType({"mr-iqa": "RobinY99/MR-IQA"}),
)

IQA_T1 = Profile(
    name="iqa-t1",
    description=('IQA-T1 (Qwen3-VL-4B): <think>…</think><answer_start>{"score": x.xx}'
                 "<answer_end>. Its analysis tools are not run: tool calls get no evidence images, as with its "
                 "--no_tools inference."),
    think_prompt=_QUESTION,
    nothink_prompt=_QUESTION,
    system_prompt=peer_prompts.IQA_T1_SYSTEM,
    answer_prefix='<think>\n\n</think>\n<answer_start>{"score": ',
    match=("iqa-t1",),
    checkpoints=MappingProxyType({"iqa-t1": "zibuyu-02/IQA-T1"}),
    parse=partial(parse_answer, tags=("<answer_start>", "<answer_end>")),
)

MR_IQA_2 = Profile(
    name="mr-iqa-2",
    description=('MR-IQA-2 (Qwen3.5-4B actor): one JSON object, {"reasoning": {"evidence", '
                 '"solution"}, "rating": "x.xx"}; no-think fills the reasoning fields empty. Its own inference '
                 "drops Qwen3.5's empty <think> block, which the no-think prompt here keeps."),
    think_prompt=peer_prompts.MR_IQA_2_USER,
    nothink_prompt=peer_prompts.MR_IQA_2_USER,
    system_prompt=peer_prompts.MR_IQA_2_SYSTEM,
    answer_prefix='{"reasoning":{"evidence":"","solution":""},"rating":"',
    match=("robiny99/mr-iqa-2", "mr-iqa-2/"),
    checkpoints=MappingProxyType({"mr-iqa-2": "RobinY99/MR-IQA-2/actor"}),
    parse=parse_json_answer,
)

Q_REALIGN = Profile(
    name="q-realign",
    description=("Q-ReAlign (Mini 0.8B, Lite 4B, Pro 9B; Qwen3.5): Q-Align's level answer 'The quality of the image "
                 "is good.', scored as Q-Align does, by the expected level over the five level words' probabilities "
                 "(bad=1 .. excellent=5). It does not reason: use no-think."),
    think_prompt=_Q_ALIGN_QUESTION,
    nothink_prompt=_Q_ALIGN_QUESTION,
    answer_prefix="The quality of the image is",
    match=("q-realign",),
    checkpoints=MappingProxyType({"q-realign-mini": "q-future/Q-ReAlign-Mini-0.8B"}),
    parse=parse_level_answer,
)

ZOOM_IQA = Profile(
    name="zoom-iqa",
    description=('Zoom-IQA (Qwen2.5-VL-7B): its first-round prompt, <think>…</think>'
                 '<answer>{"bbox_2d": […], "rating": x.xx, "tool": …}</answer>. The crop round is not run.'),
    think_prompt=peer_prompts.ZOOM_IQA,
    nothink_prompt=peer_prompts.ZOOM_IQA,
    answer_prefix='<answer>{"bbox_2d": [0, 0, 0, 0], "rating": ',
    match=("zoom-iqa",),
    checkpoints=MappingProxyType({"zoom-iqa-7b": "Ethanliang99/Zoom-IQA-7B"}),
)

EVOQUALITY = Profile(
    name="evoquality",
    description=("EvoQuality (Qwen2.5-VL-7B): reasoning, then \\boxed{x.xx}. The prompt's "
                 "start is its card's c_score; its card's tail was not readable here, so the tail follows a "
                 "third-party adapter."),
    think_prompt=_EVOQUALITY,
    nothink_prompt=_EVOQUALITY,
    answer_prefix="\\boxed{",
    match=("evoquality",),
    checkpoints=MappingProxyType({"evoquality": "ByteDance/EvoQuality"}),
    parse=partial(parse_answer, tags=("\\boxed{", "}")),
)


@hookimpl
def register_profiles(register):
    for profile in (QPONDER, VISUALQUALITY_R1, Q_INSIGHT, QWEN_INSTRUCT, MR_IQA, IQA_T1, MR_IQA_2, Q_REALIGN, ZOOM_IQA,
                    EVOQUALITY):
        register(profile)
