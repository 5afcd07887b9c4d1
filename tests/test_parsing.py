"""The answer parser, the 1–5 mapping, and the probability score, on hand-made outputs."""

import math

import pytest

from qponder_plugin.backend import Completion, TokenStep
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.parsing import parse_answer
from qponder_plugin.profile import Profile
from qponder_plugin.registry import get_profile, get_profiles, profile_for_model
from qponder_plugin.scoring import digit_distribution, expected_score, read_completion


@pytest.mark.parametrize("text, value, reasoning", [
    ("<think>Sharp, clean.</think><answer>3.72</answer>", 3.72, "Sharp, clean."),
    ("<think>a</think>\n<answer>  4 </answer>\n", 4.0, "a"),
    ('<think>ok</think><answer>{"rating": 2.5}</answer>', 2.5, "ok"),
    ("<answer>Score: 1.25</answer>", 1.25, None),
    ("<answer>4/5</answer>", 4.0, None),
    ("<answer>3.5 out of 5</answer>", 3.5, None),
    ("<answer>1</answer> <think>late</think> <answer>2.2</answer>", 2.2, "late"),  # the last answer wins
    ("<THINK>x</THINK><ANSWER>3</ANSWER>", 3.0, "x"),
    ("<think>cut short</think><answer>3.7", 3.7, "cut short"),  # unterminated final answer
    ("The image is blurry. Rating: 2", 2.0, "The image is blurry. Rating: 2"),
])
def test_parses_common_forms(text, value, reasoning):
    parsed = parse_answer(text)
    assert parsed.error is None
    assert parsed.value == pytest.approx(value)
    assert parsed.reasoning == reasoning
    assert text[parsed.start:].lstrip("+-")[0].isdigit()


@pytest.mark.parametrize("text, message", [
    ("<think>I see 3 people and 2 dogs.</think>", "no <answer>"),  # numbers in reasoning are never a score
    ("<answer>good</answer>", "holds no number"),
    ("<answer>3 or 4</answer>", "2 numbers"),
    ("", "no <answer>"),
])
def test_never_guesses(text, message):
    parsed = parse_answer(text)
    assert parsed.value is None and parsed.start is None
    assert message in parsed.error


def test_to_scale_maps_and_clamps_with_a_flag():
    assert QPONDER.to_scale(3.0) == (3.0, False)
    assert QPONDER.to_scale(7.0) == (5.0, True)
    assert QPONDER.to_scale(0.2) == (1.0, True)
    ten = Profile("ten", "", "", "", score_range=(0.0, 10.0))
    assert ten.to_scale(5.0) == (3.0, False)


def test_builtin_profiles_and_model_matching():
    assert {"qponder", "visualquality-r1", "q-insight", "qwen2.5-vl-instruct"} <= set(get_profiles())
    assert profile_for_model("TianheWu/VisualQuality-R1-7B").name == "visualquality-r1"
    assert profile_for_model("ByteDance/Q-Insight").name == "q-insight"
    assert profile_for_model("Qwen/Qwen2.5-VL-7B-Instruct").name == "qwen2.5-vl-instruct"
    assert profile_for_model("/models/something-else").name == "qwen2.5-vl-instruct"
    with pytest.raises(KeyError, match="unknown profile"):
        get_profile("nope")
    q_insight = get_profile("q-insight")
    assert parse_answer(q_insight.answer_prefix + "3.1}</answer>").value == 3.1


def steps_for(pieces, logprobs):
    offset, steps = 0, []
    for piece, lp in zip(pieces, logprobs):
        steps.append(TokenStep(piece, offset, lp))
        offset += len(piece)
    return steps


def test_expected_score_from_digit_distributions():
    text = "<answer>3.72</answer>"
    first = {"3": math.log(0.6), "4": math.log(0.3), "2": math.log(0.1), "x": math.log(0.5)}
    tenths = {"7": math.log(0.5), "8": math.log(0.5)}
    pieces = ["<answer>", "3", ".", "7", "2", "</answer>"]
    steps = steps_for(pieces, [{}, first, {}, tenths, {}, {}])
    # E[first] = 3*.6 + 4*.3 + 2*.1 = 3.2 ; E[tenths]/10 = 7.5/10
    assert expected_score(steps, text, text.index("3"), 1, 5) == pytest.approx(3.95)


def test_expected_score_integer_answer_clamp_and_fallbacks():
    text = "<answer>5</answer>"
    steps = steps_for(["<answer>", "5", "</answer>"], [{}, {"5": 0.0}, {}])
    assert expected_score(steps, text, 8, 1, 5) == pytest.approx(5.0)
    high = "<answer>5.9</answer>"
    steps = steps_for(["<answer>", "5", ".", "9", "</answer>"], [{}, {"5": 0.0}, {}, {"9": 0.0}, {}])
    assert expected_score(steps, high, 8, 1, 5) == 5.0  # clamped to the scale
    merged = steps_for(["<answer>", "3.7", "</answer>"], [{}, {"3.7": 0.0}, {}])
    assert expected_score(merged, "<answer>3.7</answer>", 8, 1, 5) is None  # digits not single tokens
    assert expected_score(steps, high, 8, 0, 10) is None  # multi-digit scale


def test_a_level_answer_is_read_as_the_expected_level_of_the_five_words():
    """Q-ReAlign's no-think answer continues its prefix with a level word; its probabilities over the five level
    words give the score, as Q-Align reads it (bad=1 ... excellent=5)."""
    q_realign = get_profile("q-realign")
    prefix = q_realign.answer_prefix
    at_word = {" bad": math.log(0.05), " poor": math.log(0.05), " fair": math.log(0.2), " good": math.log(0.5),
               " excellent": math.log(0.1), "3": math.log(0.1)}  # a digit is no level
    completion = Completion(" good.", steps_for([" good", "."], [at_word, {}]), "stop")
    reading = read_completion(q_realign, completion, prefix)
    expected = (1 * 0.05 + 2 * 0.05 + 3 * 0.2 + 4 * 0.5 + 5 * 0.1) / 0.9
    assert (reading.method, reading.text_score) == ("probability", 4.0)
    assert reading.score == pytest.approx(expected, abs=1e-4)
    four_words = {k: v for k, v in at_word.items() if k != " excellent"}  # "excellent" is no single token
    completion = Completion(" good.", steps_for([" good", "."], [four_words, {}]), "stop")
    assert read_completion(q_realign, completion, prefix).method == "text"


def test_digit_distribution_merges_spaced_tokens_and_renormalises():
    dist = digit_distribution({" 3": math.log(0.2), "3": math.log(0.2), "4": math.log(0.4), "a": 0.0}, range(1, 6))
    assert dist == pytest.approx({3: 0.5, 4: 0.5})
    assert digit_distribution({"a": 0.0}, range(1, 6)) is None


def test_a_reopened_answer_tag_is_read_from_the_last_answer():
    # Seen from the bundled model on a 16-bit grey noise image: the first <answer> is never closed.
    text = "<think>Grainy.</think><answer>2. Overall the quality is fair.</think><answer>2.66</answer>"
    parsed = parse_answer(text)
    assert (parsed.value, parsed.error) == (2.66, None)
    assert text[parsed.start:parsed.start + 4] == "2.66"
