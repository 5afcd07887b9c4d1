"""QualityGate on the trained tiny Qwen2.5-VL (score ≈ 1 + 4·brightness): cascade, fast, think, errors, streams."""

import itertools

import pytest
from smoke import solid_image

from qponder_plugin import GateError, QualityGate, load_scorer

LEVELS = [0.05, 0.2, 0.4, 0.45, 0.5, 0.55, 0.6, 0.8, 0.95]


@pytest.fixture(scope="module")
def images():
    return [solid_image(b, 72, seed=300 + i) for i, b in enumerate(LEVELS)]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return path


def test_arguments_are_checked_without_loading_anything():
    for bad in ({"threshold": 0.5}, {"threshold": 3, "strategy": "slow"}, {"threshold": 3, "on_error": "ignore"},
                {"threshold": 3, "margin": -1}):
        with pytest.raises(ValueError):
            QualityGate(**bad)
    gate = QualityGate(3.0, model="no/such-model")
    assert not gate.loaded and gate.split([]) == ([], []) and not gate.loaded


@pytest.mark.model
def test_cascade_reasons_only_near_the_threshold(scorer, images):
    fast = scorer.assess_batch(images, think=False)
    threshold = sorted(a.score for a in fast)[len(fast) // 2]  # the middle image's score: some are near it
    near = [abs(a.score - threshold) <= 0.25 for a in fast]
    assert any(near) and not all(near)
    gate = QualityGate(threshold, scorer=scorer)
    verdicts = [v for _, v in gate.verdicts(images)]
    assert gate.calls == {"no-think": len(images), "think": sum(near)}
    assert [v.stage for v in verdicts] == ["think" if n else "fast" for n in near]
    for verdict, reading in zip(verdicts, fast):
        assert verdict.assessment.ok and verdict.passed == (verdict.score >= threshold)
        assert verdict.assessment.mode == ("think" if verdict.stage == "think" else "no-think")
        if verdict.stage == "fast":
            assert verdict.score == reading.score
    assert not verdicts[0].passed and verdicts[-1].passed  # the darkest is rejected, the brightest kept


@pytest.mark.model
def test_fast_and_think_strategies(scorer, images):
    fast_gate = QualityGate(3.0, scorer=scorer, strategy="fast")
    think_gate = QualityGate(3.0, scorer=scorer, strategy="think")
    fast = [v for _, v in fast_gate.verdicts(images)]
    think = [v for _, v in think_gate.verdicts(images)]
    assert fast_gate.calls == {"no-think": len(images)} and think_gate.calls == {"think": len(images)}
    assert {v.stage for v in fast} == {"fast"} and {v.stage for v in think} == {"think"}
    far = [i for i, b in enumerate(LEVELS) if abs(b - 0.5) > 0.2]  # far from the threshold both modes agree
    assert [fast[i].passed for i in far] == [think[i].passed for i in far] == [LEVELS[i] > 0.5 for i in far]


@pytest.mark.model
def test_split_check_and_lazy_filter(scorer, images):
    gate = QualityGate(3.0, scorer=scorer)
    passed, rejected = gate.split(images)
    assert len(passed) + len(rejected) == len(images)
    assert images[-1] in passed and images[0] in rejected
    assert gate.check(images[-1]).passed and not gate.check(images[0]).passed
    pulled = []

    def stream():
        for image in itertools.cycle(images):
            pulled.append(image)
            yield image

    first = list(itertools.islice(gate.filter(stream(), chunk_size=4), 2))
    assert len(first) == 2 and all(gate.check(image).passed for image in first)
    assert len(pulled) % 4 == 0 and len(pulled) <= 2 * len(images)  # an endless stream, read a chunk at a time


@pytest.mark.model
def test_unparsed_reasoning_falls_back_to_the_no_think_score(smoke_model, images):
    with load_scorer(smoke_model, max_new_tokens=5) as short:  # too short to finish any reasoning
        gate = QualityGate(3.0, scorer=short, strategy="think")
        verdicts = [gate.check(image) for image in (images[0], images[-1])]
    assert [v.stage for v in verdicts] == ["fallback", "fallback"]
    assert [v.passed for v in verdicts] == [False, True]
    assert all(v.assessment.ok and v.assessment.mode == "no-think" for v in verdicts)
    assert all("did not parse" in v.note and "max_new_tokens" in v.note for v in verdicts)


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["cascade", "think"])
def test_image_errors_are_never_kept_silently(scorer, broken, strategy):
    rejected = QualityGate(3.0, scorer=scorer, strategy=strategy).check(broken)
    assert (rejected.passed, rejected.stage, rejected.flagged) == (False, "error", False)
    assert rejected.assessment.status == "image_error" and "corrupt" in rejected.note
    kept = QualityGate(3.0, scorer=scorer, strategy=strategy, on_error="keep").check(broken)
    assert (kept.passed, kept.stage, kept.flagged) == (True, "error", True) and kept.note.startswith("kept despite")
    with pytest.raises(GateError, match="image_error") as raised:
        QualityGate(3.0, scorer=scorer, strategy=strategy, on_error="raise").check(broken)
    assert raised.value.assessment.source == str(broken)


@pytest.mark.model
def test_the_gate_closes_only_the_scorer_it_loaded(smoke_model, scorer, images):
    with QualityGate(3.0, scorer=scorer) as borrowed:
        borrowed.check(images[0])
    assert scorer.backend is not None  # a scorer passed in stays open
    with QualityGate(3.0, model=str(smoke_model), batch_size=2) as gate:
        assert not gate.loaded
        verdict = gate.check(images[-1])
        own = gate.scorer
        assert gate.loaded and own.batch_size == 2 and verdict.passed
    assert own.backend is None and not gate.loaded
    assert verdict.to_dict()["assessment"]["status"] == "ok" and verdict.to_dict()["stage"] in ("fast", "think")


def test_the_earlier_name_of_the_strategy_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="strategy="):
        assert QualityGate(3.0, mode="fast").strategy == "fast"
