"""GRPO rewards against hand-computed values, malformed completions included."""

import math
from types import SimpleNamespace

import pytest
from qponder_plugin.training.registry import get_rewards
from qponder_plugin.training.rewards import (
    AccuracyReward,
    ConsistencyReward,
    RankFidelityReward,
    completion_text,
    format_reward,
)


def chat(text):
    return [{"role": "assistant", "content": text}]


GOOD = "<think>Sharp and clean.</think><answer>3.50</answer>"
MALFORMED = ["", "<think>no answer</think>", "<answer>3.5</answer>", "<think>x</think><answer>good</answer>",
             "<think>x</think><answer>3</answer> trailing words", "<think></think><answer>3</answer>"]


def test_registry_holds_every_builtin_reward():
    builtin = {"format", "accuracy", "accuracy_gaussian", "consistency", "rank_fidelity", "grounding"}
    assert builtin <= set(get_rewards())


def test_completion_text_accepts_strings_and_messages():
    assert completion_text(GOOD) == GOOD
    assert completion_text(chat(GOOD)) == GOOD
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]) == GOOD


def test_format_reward():
    assert format_reward([chat(GOOD), chat("  " + GOOD + "\n")]) == [1.0, 1.0]
    assert format_reward([chat(t) for t in MALFORMED]) == [0.0] * len(MALFORMED)


def test_accuracy_threshold_and_gaussian():
    answers = [chat(f"<think>r</think><answer>{s}</answer>") for s in ("3.50", "3.80", "4.90", "9")]
    mos = [3.6, 3.4, 4.0, 5.0]
    # |3.5-3.6|=0.1 < .35; |3.8-3.4|=0.4; |4.9-4.0|=0.9; 9 clamps to 5 -> |5-5|=0
    assert AccuracyReward()(answers, mos=mos) == [1.0, 0.0, 0.0, 1.0]
    gaussian = AccuracyReward(sigma=0.5)(answers, mos=mos)
    expected = [math.exp(-d * d / 0.5) for d in (0.1, 0.4, 0.9, 0.0)]  # exp(-d^2 / (2 * 0.5^2))
    assert gaussian == pytest.approx(expected)
    assert AccuracyReward()([chat(t) for t in MALFORMED[:2]], mos=[3, 3]) == [0.0, 0.0]


def test_rank_fidelity_matches_the_thurstone_fidelity_by_hand():
    # Two images: a (MOS 4) with answers 4 and 3, b (MOS 2) with answers 2 and 2.
    completions = [chat(f"<think>r</think><answer>{s}</answer>") for s in ("4", "3", "2", "2")]
    rewards = RankFidelityReward(gamma=0.1)(completions, mos=[4, 4, 2, 2], image_path=["a", "a", "b", "b"])
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    # vs b: mean 2, var 0 -> p = Φ((s-2)/sqrt(0.1)); t = 1 (a better): fidelity = sqrt(p)
    assert rewards[0] == pytest.approx(math.sqrt(phi(2 / math.sqrt(0.1))))
    assert rewards[1] == pytest.approx(math.sqrt(phi(1 / math.sqrt(0.1))))
    # vs a: mean 3.5, var 0.25 -> p = Φ((2-3.5)/sqrt(0.35)); t = 0: fidelity = sqrt(1-p)
    assert rewards[2] == pytest.approx(math.sqrt(1 - phi(-1.5 / math.sqrt(0.35))))
    assert rewards[0] > rewards[1]
    unparsed = RankFidelityReward()([chat("no answer"), chat("<answer>2</answer>")], mos=[4, 2],
                                    image_path=["a", "b"])
    assert unparsed[0] == 0.0
    assert RankFidelityReward()([chat(GOOD)] * 2, mos=[3, 3], image_path=["a", "a"]) == [None, None]


@pytest.mark.model
def test_consistency_reward_rescoring_without_the_image(smoke_model):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(smoke_model)
    model = AutoModelForImageTextToText.from_pretrained(smoke_model)
    trainer = SimpleNamespace(processing_class=processor, model=model,
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    reward = ConsistencyReward(sigma=0.5)
    reward.bind(trainer)
    dark = "Exposure: the image is very dark and underexposed; shadows swallow most of the detail."
    [own] = reward.reasoning_scores([dark])
    # By hand: the digit distribution after the text-only prompt, expected value over 1..5.
    tokenizer = processor.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": (
        "Here is an assessment of an image's visual quality, written by an expert who saw the image:\n"
        f"{dark}\n\nFrom this assessment alone, give the image's quality score from 1 (very poor) to 5 (excellent) "
        "inside <answer> </answer> tags.")}]}], tokenize=False, add_generation_prompt=True) + "<answer>"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        probs = model(**ids).logits[0, -1].softmax(-1)
    p = torch.stack([probs[tokenizer.convert_tokens_to_ids(str(d))] for d in range(1, 6)])
    assert own == pytest.approx(float((p / p.sum() * torch.arange(1, 6)).sum()), abs=1e-4)
    answers = [chat(f"<think>{dark}</think><answer>{own:.2f}</answer>"),
               chat(f"<think>{dark}</think><answer>{min(own + 1.0, 5):.2f}</answer>"), chat("garbage")]
    rewards = reward(answers)
    assert rewards[0] == pytest.approx(math.exp(-((own - round(own, 2)) ** 2) / 0.5), abs=1e-3)
    assert rewards[1] == pytest.approx(math.exp(-((min(own + 1, 5) - own) ** 2) / 0.5), abs=2e-2)
    assert rewards[2] == 0.0
    assert reward([chat("garbage"), chat("<answer>x</answer>")]) == [0.0, 0.0]  # nothing to rescore: no forward


def test_grounding_rewards_findings_stated_as_measured_weighted_by_rarity(tmp_path):
    import random

    import numpy as np
    from PIL import Image, ImageFilter
    from qponder_plugin.training.describer import FINDINGS, describe, findings, measure
    from qponder_plugin.training.rewards import GroundingReward

    from qponder_plugin.images import load_image

    x, y = np.meshgrid(np.linspace(0, 1, 128), np.linspace(0, 1, 128))
    stripes = np.stack([x, y, 1 - x], -1) * 200 + 30
    stripes[::8] = 20
    sharp = Image.fromarray(stripes.astype("uint8"))
    paths = [tmp_path / name for name in ("soft.png", "soft-too.png", "sharp.png")]
    for path, image in zip(paths, [sharp.filter(ImageFilter.GaussianBlur(3))] * 2 + [sharp]):
        image.save(path)
    measured = [measure(load_image(path)) for path in paths]
    soft, crisp = (findings(m)["sharpness"] for m in measured[1:])
    assert soft != crisp  # two soft images and one crisp one: crisp is the rare finding
    truths = [describe(m, 2.0, random.Random(0)) for m in measured]
    reward = GroundingReward()
    with pytest.raises(RuntimeError, match="bind"):
        reward(truths, image_path=paths)
    reward.fit(paths)
    right = reward(truths, image_path=paths)
    assert sum(right) / 3 == pytest.approx(1.0)  # a true description averages 1 over the fitted images
    # Stating the common finding on the crisp image loses its rare, heavier weight: 1 / (2 · 1/3), over six aspects.
    wrong = truths[2].replace(next(v for v in FINDINGS["sharpness"][crisp][1] if v in truths[2]),
                              FINDINGS["sharpness"][soft][1][0])
    assert reward([wrong], image_path=[paths[2]]) == [pytest.approx(right[2] - 1.5 / 6)]
    assert reward(["<think>Fine.</think><answer>2</answer>"], image_path=paths[:1]) == [0.0]
