"""End to end through the public API on the trained tiny Qwen2.5-VL (real transformers `generate`)."""

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr
from smoke import solid_image

import qponder_plugin
from qponder_plugin import (
    Assessment,
    BackendError,
    ModelNotFoundError,
    assess,
    assess_batch,
    hookimpl,
    load_scorer,
    register_plugin,
    unregister_plugin,
)
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.default_plugins.transformers_backend import TransformersBackend
from qponder_plugin.result import SCHEMA_VERSION

pytestmark = pytest.mark.model

SCHEMA_KEYS = ["schema_version", "score", "normalized", "text_score", "score_std", "reasoning", "raw", "status",
               "error", "source", "model", "profile", "backend", "mode", "method", "samples", "clamped",
               "finish_reason", "timings"]


def test_think_mode_parses_reasoning_and_bright_beats_dark(scorer):
    dark, bright = scorer.assess_batch([solid_image(0.08, 200, seed=1), solid_image(0.92, 200, seed=2)])
    for result in (dark, bright):
        assert result.status == "ok", result.error
        assert result.method == "probability" and result.mode == "think"
        assert result.raw.startswith("<think>") and "</think><answer>" in result.raw
        assert result.reasoning and "<" not in result.reasoning
        assert 1.0 <= result.score <= 5.0 and result.normalized == pytest.approx((result.score - 1) / 4, abs=1e-4)
    assert "dark" in dark.reasoning.lower()
    assert bright.score > dark.score + 1.5


def test_no_think_is_one_short_answer_and_agrees_in_ranking(scorer):
    levels = [0.05, 0.3, 0.55, 0.8, 0.97]
    results = scorer.assess_batch([solid_image(b, 120, seed=10 + i) for i, b in enumerate(levels)], think=False)
    assert all(r.ok and r.mode == "no-think" and r.method == "probability" for r in results)
    assert all(r.raw.startswith("<answer>") and r.reasoning is None for r in results)
    assert spearmanr(levels, [r.score for r in results])[0] > 0.8


def test_probability_score_agrees_with_text_score(scorer):
    levels = np.linspace(0.02, 0.98, 16)
    results = scorer.assess_batch([solid_image(b, 96, seed=100 + i) for i, b in enumerate(levels)])
    assert all(r.ok for r in results)
    prob, text = [r.score for r in results], [r.text_score for r in results]
    assert float(np.mean(np.abs(np.subtract(prob, text)))) < 0.5
    assert spearmanr(prob, text)[0] > 0.8


def test_deterministic_by_default(scorer):
    image = solid_image(0.4, 100, seed=5)
    first, second = scorer.assess(image), scorer.assess(image)
    assert (first.score, first.raw) == (second.score, second.raw)


def test_sampling_is_opt_in_and_reports_spread(scorer):
    import torch

    torch.manual_seed(6)  # sampling draws from torch's global generator: without a seed, earlier tests decide
    result = scorer.assess(solid_image(0.6, 100, seed=6), n=4, temperature=1.5)
    assert result.ok and result.method == "sampling"
    failed = 4 - len(result.samples)  # a sample that does not parse is reported, never replaced
    assert len(result.samples) >= 2
    assert (result.error is None) if failed == 0 else (result.error == f"{failed} of 4 samples did not parse")
    assert result.score == pytest.approx(np.mean(result.samples))
    assert result.score_std == pytest.approx(np.std(result.samples))


def test_bad_files_are_per_item_errors_and_the_batch_goes_on(scorer, tmp_path):
    good = tmp_path / "good.png"
    solid_image(0.9, 80).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    inputs = [good, broken, tmp_path / "missing.png", np.zeros((64, 64, 3), np.uint8), "not/a/file.txt"]
    results = scorer.assess_batch(inputs)
    assert [r.status for r in results] == ["ok", "image_error", "image_error", "ok", "image_error"]
    assert results[0].score > results[3].score
    assert "corrupt" in results[1].error and "no such file" in results[2].error
    assert all(r.score is None for r in results if not r.ok)
    assert results[1].source == str(broken)
    assert {r.mode for r in scorer.assess_batch(inputs, think=False)} == {"no-think"}  # failed rows say so too


def test_truncated_reasoning_gets_a_clear_status(smoke_model):
    with load_scorer(smoke_model, max_new_tokens=5) as short:
        result = short.assess(solid_image(0.5, 64))
    assert result.status == "parse_error" and result.finish_reason == "length"
    assert "max_new_tokens" in result.error and result.score is None and result.raw


class PoisonedBackend(TransformersBackend):
    """The real backend, made to fail (as an engine error would) whenever an all-black image is in the batch:
    a deterministic stand-in for a CUDA OOM or a crashed kernel, which cannot be provoked on purpose here."""

    def generate(self, requests, **options):
        if any(r.image.getextrema() == ((0, 0),) * 3 for r in requests):
            raise RuntimeError("engine failure")
        return super().generate(requests, **options)


class PoisonedPlugin:
    @hookimpl
    def register_backends(self, register):
        register("poisoned", PoisonedBackend)


def test_an_engine_failure_is_isolated_to_its_item(smoke_model):
    name = register_plugin(PoisonedPlugin(), "poisoned-backend")
    try:
        poisoned = load_scorer(smoke_model, backend="poisoned", batch_size=4)
    finally:
        unregister_plugin(name)
    with poisoned:
        results = poisoned.assess_batch([solid_image(0.2, 64), Image.new("RGB", (77, 77)), solid_image(0.8, 64)])
    assert [r.status for r in results] == ["ok", "backend_error", "ok"]
    assert "engine failure" in results[1].error


def test_public_api_json_schema_and_model_env(smoke_model, monkeypatch):
    image = solid_image(0.7, 90)
    explicit = assess(image, model=str(smoke_model))
    monkeypatch.setenv("QPONDER_MODEL", str(smoke_model))
    from_env = assess_batch([image, image], think=False)
    assert isinstance(explicit, Assessment) and explicit.ok and len(from_env) == 2
    for result in (explicit, *from_env):
        data = json.loads(json.dumps(result.to_dict()))
        assert list(data) == SCHEMA_KEYS
        assert data["schema_version"] == SCHEMA_VERSION and data["profile"] == "qponder"
        assert set(data["timings"]) == {"load_ms", "infer_ms"}
    assert repr(explicit).startswith(f"<Assessment {explicit.source} {explicit.score:.2f}/5 (probability)")


def test_no_model_and_no_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("QPONDER_MODEL", raising=False)
    monkeypatch.setattr("qponder_plugin.spec.NANO", tmp_path / "missing")
    with pytest.raises(ModelNotFoundError, match="QPONDER_MODEL"):
        assess(solid_image(0.5, 32))


def test_scorer_is_a_context_manager_that_frees_the_model(smoke_model):
    with load_scorer(smoke_model) as scorer:
        assert scorer.assess(solid_image(0.5, 64)).ok
    assert scorer.backend is None
    with pytest.raises(BackendError, match="closed"):
        scorer.assess(solid_image(0.5, 64))


def test_loading_a_missing_model_fails_clearly(tmp_path):
    with pytest.raises(BackendError, match="cannot load"):
        load_scorer(tmp_path / "nothing-here")


def test_listing():
    assert "transformers" in qponder_plugin.list_backends()
    aliases = {m.alias: m for m in qponder_plugin.list_models()}
    assert aliases["visualquality-r1-7b"].model_id == "TianheWu/VisualQuality-R1-7B"


def test_assess_takes_a_profile_object(smoke_model):
    custom = replace(QPONDER, name="custom", checkpoints={"alias": "org/model"})  # a dict: not hashable
    result = assess(solid_image(0.8, 64), model=str(smoke_model), profile=custom, think=False)
    assert result.ok and result.profile == "custom"
    assert assess(solid_image(0.8, 64), model=str(smoke_model), profile=custom, think=False).score == result.score


class RecordingBackend(TransformersBackend):
    prompts: list[str] = []

    def generate(self, requests, **options):
        RecordingBackend.prompts += [r.prompt for r in requests]
        return super().generate(requests, **options)


class LatePlugin:
    profile = replace(QPONDER, name="late", think_prompt=QPONDER.think_prompt + " ")

    @hookimpl
    def register_profiles(self, register):
        register(self.profile)

    @hookimpl
    def register_backends(self, register):
        register("recording", RecordingBackend)


def test_a_profile_and_a_backend_registered_after_a_first_assess_are_used(smoke_model):
    image = solid_image(0.3, 64)
    first = assess(image, model=str(smoke_model))
    assert first.ok and (first.backend, first.profile) == ("transformers", "qponder")
    name = register_plugin(LatePlugin(), "late")
    try:
        late = assess(image, model=str(smoke_model), backend="recording", profile="late")
    finally:
        unregister_plugin(name)
    assert late.ok and (late.backend, late.profile) == ("recording", "late")
    assert RecordingBackend.prompts == [LatePlugin.profile.think_prompt]
