"""The 2026 Qwen3-VL and Qwen3.5 generation: each peer profile reads its checkpoint's own answer form, and the
transformers backend switches reasoning on and off on tiny offline Qwen3-VL (Thinking template) and Qwen3.5 models."""

import json
import math

import pytest
from click.testing import CliRunner
from smoke import solid_image

from qponder_plugin import assess, load_scorer
from qponder_plugin.backend import Request
from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.default_plugins.transformers_backend import chat_text, readout_token_ids
from qponder_plugin.registry import get_profile, profile_for_model
from qponder_plugin.scoring import read_completion
from qponder_plugin.spec import ModelSpec, checkpoint_folder, hub_subfolder

ALIASES = {"mr-iqa": ("RobinY99/MR-IQA", "mr-iqa"), "iqa-t1": ("zibuyu-02/IQA-T1", "iqa-t1"),
           "mr-iqa-2": ("RobinY99/MR-IQA-2/actor", "mr-iqa-2"),
           "q-realign-mini": ("q-future/Q-ReAlign-Mini-0.8B", "q-realign"),
           "zoom-iqa-7b": ("Ethanliang99/Zoom-IQA-7B", "zoom-iqa"),
           "evoquality": ("ByteDance/EvoQuality", "evoquality")}


@pytest.mark.parametrize("alias", ALIASES)
def test_aliases_are_listed_and_hub_ids_pick_their_profile(alias):
    model_id, profile = ALIASES[alias]
    assert profile_for_model(model_id).name == profile
    listed = json.loads(CliRunner().invoke(build(), ["models", "--json"]).stdout)["models"]
    assert {"alias": alias, "model_id": model_id, "profile": profile} in listed


@pytest.mark.parametrize("alias", ALIASES)
def test_aliases_resolve(alias):
    spec = ModelSpec.resolve(alias)
    assert (spec.checkpoint, spec.profile.name) == ALIASES[alias]


def test_similar_names_pick_the_right_mr_iqa():
    assert profile_for_model("checkpoints/mr-iqa-2/actor").name == "mr-iqa-2"
    assert profile_for_model("outputs/mr-iqa-2b").name == "mr-iqa"  # MR-IQA's own 2B training folder


def test_a_hub_subfolder_is_split_off_only_for_hub_ids(tmp_path):
    assert hub_subfolder("RobinY99/MR-IQA-2/actor") == ("RobinY99/MR-IQA-2", {"subfolder": "actor"})
    assert hub_subfolder("RobinY99/MR-IQA") == ("RobinY99/MR-IQA", {})
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert hub_subfolder(str(tmp_path / "a" / "b")) == (str(tmp_path / "a" / "b"), {})


def test_an_engine_gets_a_hub_subfolder_as_its_local_folder(tmp_path, monkeypatch):
    """vLLM loads a folder or a repository id, not ``owner/name/subfolder``: the subfolder is found in the hub
    cache (offline here; online, only that subfolder is fetched) and handed over as a folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--RobinY99--MR-IQA-2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    actor = repo / "snapshots" / commit / "actor"
    actor.mkdir(parents=True)
    (actor / "config.json").write_text('{"model_type": "qwen3_5"}')
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert checkpoint_folder("RobinY99/MR-IQA-2/actor") == str(actor)
    assert checkpoint_folder("RobinY99/MR-IQA") == "RobinY99/MR-IQA"
    assert ModelSpec.resolve("RobinY99/MR-IQA-2/actor").family == "qwen3.5"
    with pytest.raises(OSError):  # not in the cache, and no hub to ask
        checkpoint_folder("RobinY99/MR-IQA-3/actor")


# Each checkpoint's answer, quoted from its own repository or card (source above each).
ANSWERS = [
    # https://huggingface.co/RobinY99/MR-IQA (model card, "Output Format")
    ("mr-iqa", "<answer>3.74</answer>", 3.74, None),
    # github.com/peter0749/IQA-T1, train/grpo/EasyR1_IQA-T1/examples/reward_function/iqa.py (its test cases)
    ("iqa-t1", '<think>The image shows good quality with clear details.</think>\n<answer_start>{"score": 3.46}'
               "<answer_end>", 3.46, "The image shows good quality with clear details."),
    # the same answer as the backends decode it: <answer_start> and <answer_end> are added special tokens
    # (train/sft/LlamaFactory_IQA-T1/configs/qwen3vl_4b_iqa_full_sft.yaml, add_special_tokens)
    ("iqa-t1", '<think>The image shows good quality with clear details.</think>\n{"score": 3.46}', 3.46,
     "The image shows good quality with clear details."),
    # github.com/RobinY99/MR-IQA-2, actor/tests/test_actor_to_editor_example.py
    ("mr-iqa-2", '{"reasoning":{"evidence":"Mild softness is visible on the bicycle frame.",'
                 '"solution":"  Apply mild sharpening while preserving the scene.  "},"rating":"3.25"}', 3.25,
     "Mild softness is visible on the bicycle frame. Apply mild sharpening while preserving the scene."),
    # github.com/Q-Future/Q-ReAlign, qalign/template.py (the assistant target; qalign/prompts.py builds it)
    ("q-realign", "The quality of the image is good.", 4.0, None),
    # github.com/EthanLiang99/Zoom-IQA, tests/test_protocol.py
    ("zoom-iqa", '<think>complete first analysis</think><answer>{"rating": 3}</answer>', 3.0,
     "complete first analysis"),
    ("zoom-iqa", '<answer>{"bbox_2d": [0.1, 0.2, 0.8, 0.9], "rating": "4.2", "tool": "crop"}</answer>', 4.2, None),
    # EvoQuality's answer in \boxed{}: a third-party adapter's test (github.com/seruva19/ayase,
    # tests/modules/per_module/test_evoquality.py); EvoQuality's card names \boxed{} nowhere this could read
    ("evoquality", "The picture shows mild blur and compression artifacts, but the composition is clear. "
                   "\\boxed{3.25}", 3.25,
     "The picture shows mild blur and compression artifacts, but the composition is clear."),
]


@pytest.mark.parametrize("profile, text, value, reasoning", ANSWERS)
def test_each_profile_reads_its_checkpoints_own_answer(profile, text, value, reasoning):
    parsed = get_profile(profile).parse(text)
    assert parsed.error is None
    assert parsed.value == pytest.approx(value) and parsed.reasoning == reasoning
    assert text[parsed.start:].lstrip("+-")[0].isdigit() or text[parsed.start:].startswith("good")


@pytest.mark.parametrize("profile, completion, value", [
    ("mr-iqa", "3.7", 3.7), ("iqa-t1", "3.46}", 3.46), ("mr-iqa-2", '3.25"}', 3.25), ("q-realign", " fair.", 3.0),
    ("zoom-iqa", '4.20, "tool": "final"}</answer>', 4.2), ("evoquality", "2.5}", 2.5)])
def test_no_think_prefixes_end_where_the_score_starts(profile, completion, value):
    p = get_profile(profile)
    parsed = p.parse(p.answer_prefix + completion)
    assert parsed.value == pytest.approx(value) and parsed.start == len(p.answer_prefix) + (profile == "q-realign")
    assert p.to_scale(parsed.value)[0] == pytest.approx(value)  # every peer scores on 1-5


def test_level_answers_never_guess():
    parsed = get_profile("q-realign").parse("The quality of the image is hard to say.")
    assert parsed.value is None and "no quality level" in parsed.error


@pytest.fixture
def qwen3_scorer(qwen3_model):
    with load_scorer(qwen3_model[1], batch_size=2, max_new_tokens=160) as scorer:
        yield scorer


@pytest.mark.model
def test_templates_open_reasoning_and_no_think_closes_it(qwen3_scorer):
    processor, image = qwen3_scorer.backend.processor, solid_image(0.5, 64)
    think = chat_text(processor, Request(image, QPONDER.think_prompt))
    no_think = chat_text(processor, Request(image, QPONDER.nothink_prompt, prefix="<answer>"))
    assert think.endswith("<|im_start|>assistant\n<think>\n")  # the template itself opens <think>
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<answer>")  # one prefill to the answer


@pytest.mark.model
def test_digits_are_single_tokens_of_a_qwen3_tokenizer(qwen3_scorer):
    groups = readout_token_ids(qwen3_scorer.backend.tokenizer, list("0123456789"))
    assert sorted(groups) == list("0123456789") and all(len(ids) == 1 for ids in groups.values())


@pytest.mark.model
def test_no_think_is_one_prefill_and_a_probability_score(qwen3_scorer):
    image = solid_image(0.8, 96, seed=3)
    [completion] = qwen3_scorer.backend.generate([Request(image, QPONDER.nothink_prompt, prefix="<answer>")],
                                                 max_new_tokens=3)[0]
    assert len(completion.steps) == 3 and completion.finish_reason == "length"  # the score's digits, no reasoning
    reading = read_completion(QPONDER, completion, "<answer>")
    assert reading.raw[9] == "."  # "<answer>d.d": the first digit, then the tenths digit two steps on

    def mean(logprobs, digits):
        mass = {d: math.exp(logprobs[str(d)]) for d in digits}
        return sum(d * p for d, p in mass.items()) / sum(mass.values())

    expected = mean(completion.steps[0].logprobs, range(1, 6)) + mean(completion.steps[2].logprobs, range(10)) / 10
    assert reading.method == "probability" and reading.score == pytest.approx(min(expected, 5.0), abs=1e-4)
    [result] = qwen3_scorer.assess_batch([image], think=False)
    assert (result.status, result.method, result.mode) == ("ok", "probability", "no-think")
    assert result.raw.startswith("<answer>") and result.reasoning is None and result.finish_reason == "length"


@pytest.mark.model
def test_think_mode_reasons_inside_the_opened_block(qwen3_scorer):
    dark, bright = qwen3_scorer.assess_batch([solid_image(0.05, 96, seed=4), solid_image(0.95, 96, seed=5)])
    for result in (dark, bright):
        assert result.mode == "think" and "</think><answer>" in result.raw, result.raw
        assert result.status == "ok" and result.method == "probability" and result.finish_reason == "stop"
        assert result.reasoning.startswith("Exposure:") and "<" not in result.reasoning
    assert bright.score > dark.score


@pytest.mark.model
@pytest.mark.parametrize("profile", ["qponder", "mr-iqa"])
def test_assess_with_a_profile(qwen3_model, profile):
    result = assess(solid_image(0.7, 80, seed=6), model=qwen3_model[1], profile=profile, think=False)
    assert (result.status, result.profile, result.method) == ("ok", profile, "probability"), result.error
    assert 1.0 <= result.score <= 5.0
