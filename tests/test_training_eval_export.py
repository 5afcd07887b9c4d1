"""Evaluation metrics and report, and export (LoRA merge) of the training wing."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from qponder_plugin.training.evaluate import METRIC_KEYS, evaluate, logistic, metrics

from qponder_plugin.result import Assessment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Rec:  # duck-typed stand-in for training.data.MosRecord
    image: str
    mos: float


# ---------------------------------------------------------------- metrics


def test_import_stays_light():
    code = ("import sys, qponder_plugin.training.evaluate, qponder_plugin.training.export\n"
            "print([m for m in ('torch', 'scipy', 'matplotlib', 'peft', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_perfect_monotone_nonlinear_relation():
    pred = np.linspace(-3, 3, 21)
    mos = 1 + 4 / (1 + np.exp(-2 * pred))  # a logistic of pred: monotone, far from linear
    m = metrics(pred, mos)
    assert set(METRIC_KEYS) <= set(m)
    assert m["srcc"] == pytest.approx(1.0) and m["krcc"] == pytest.approx(1.0)
    assert m["logistic_fit"] is True and m["notes"] == []
    assert m["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert m["plcc_raw"] < 0.99 < m["plcc"]
    assert m["rmse"] == pytest.approx(0.0, abs=1e-4) and m["rmse"] < m["rmse_raw"]
    assert m["n"] == 21
    np.testing.assert_allclose(logistic(pred, *m["logistic_params"]), mos, atol=1e-4)


def test_decreasing_relation_fits_too():
    pred = np.linspace(-3, 3, 21)
    mos = 1 + 4 / (1 + np.exp(2 * pred))
    m = metrics(pred, mos)
    assert m["srcc"] == pytest.approx(-1.0) and m["krcc"] == pytest.approx(-1.0)
    assert m["plcc_raw"] < -0.9
    b1, b2, _, _ = m["logistic_params"]
    assert b1 < b2  # the fitted curve is decreasing, so the mapped scores track MOS: PLCC after the fit is +1
    assert m["plcc"] == pytest.approx(1.0, abs=1e-6)


def test_small_example_by_hand():
    # pred = [1, 2, 3, 4, 5], mos = [1, 3, 2, 5, 4] (ranks equal the values, no ties).
    # SRCC: d = rank differences = [0, -1, 1, -1, 1], sum d^2 = 4; 1 - 6*4 / (5*(25-1)) = 1 - 24/120 = 0.8.
    # KRCC: 10 pairs; discordant are (2,3) and (4,5) -> 8 concordant, 2 discordant; (8-2)/10 = 0.6.
    # PLCC raw: both have mean 3 and sum of squared deviations 10; covariance sum
    #   (-2)(-2) + (-1)(0) + (0)(-1) + (1)(2) + (2)(1) = 8 -> 8/10 = 0.8.
    # RMSE raw: squared errors [0, 1, 1, 1, 1] -> sqrt(4/5) = 0.894427...
    m = metrics([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert m["srcc"] == pytest.approx(0.8)
    assert m["krcc"] == pytest.approx(0.6)
    assert m["plcc_raw"] == pytest.approx(0.8)
    assert m["rmse_raw"] == pytest.approx(math.sqrt(0.8))
    assert m["n"] == 5
    assert m["logistic_fit"] is True
    assert m["plcc"] >= m["plcc_raw"] - 1e-9  # a least-squares fit that includes a near-linear map cannot lose
    assert m["rmse"] <= m["rmse_raw"] + 1e-9


def test_three_points_by_hand_and_fit_fallback():
    # pred = [1, 2, 3], mos = [1, 3, 2]: d = [0, -1, 1], sum d^2 = 2 -> SRCC = 1 - 6*2/(3*8) = 0.5.
    # Pairs: (1,2) concordant, (1,3) concordant, (2,3) discordant -> KRCC = (2-1)/3 = 1/3.
    # Only 3 points for a 4-parameter fit: PLCC/RMSE fall back to raw, with a flag and a note.
    m = metrics([1, 2, 3], [1, 3, 2])
    assert m["srcc"] == pytest.approx(0.5)
    assert m["krcc"] == pytest.approx(1 / 3)
    assert m["logistic_fit"] is False and m["logistic_params"] is None
    assert m["plcc"] == m["plcc_raw"] == pytest.approx(0.5)
    assert m["rmse"] == m["rmse_raw"] == pytest.approx(math.sqrt(2 / 3))
    assert any("at least 4" in note for note in m["notes"])


def test_constant_predictions_give_nan_with_note():
    m = metrics([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    for key in ("srcc", "krcc", "plcc", "plcc_raw", "rmse"):
        assert math.isnan(m[key])
    assert m["rmse_raw"] == pytest.approx(math.sqrt((4 + 1 + 0 + 1) / 4))  # still defined
    assert m["n"] == 4 and m["logistic_fit"] is False
    assert any("constant predictions" in note for note in m["notes"])


def test_too_few_and_non_finite_pairs():
    m = metrics([1.0, 2.0], [1.0, 2.0])
    assert math.isnan(m["srcc"]) and m["n"] == 2 and any("at least 3" in note for note in m["notes"])
    empty = metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["rmse_raw"])
    m = metrics([1, 2, float("nan"), 4, 5], [1, 2, 3, 4, 5])
    assert m["n"] == 4 and m["srcc"] == pytest.approx(1.0) and any("dropped 1" in note for note in m["notes"])
    with pytest.raises(ValueError):
        metrics([1, 2, 3], [1, 2])


# ---------------------------------------------------------------- evaluate (fake scorer, no model)


class FakeScorer:
    model_id, backend_name = "fake/model", "fake"

    class profile:  # noqa: N801 - mimics Profile's .name
        name = "qponder"

    def __init__(self, scores):
        self.scores = scores
        self.calls = []

    def iter_assess(self, images, *, think=True, n=1, temperature=1.0):
        self.calls.append(dict(images=list(images), think=think, n=n, temperature=temperature))
        for image, score in zip(images, self.scores):
            if score == "parse":
                yield Assessment(source=image, status="parse_error", error="no score")
            elif score == "image":
                yield Assessment(source=image, status="image_error", error="no such file")
            else:
                yield Assessment(source=image, score=score)


def test_evaluate_with_fake_scorer(tmp_path):
    pytest.importorskip("matplotlib")
    records = [Rec(f"img{i}.png", mos) for i, mos in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 3.5])]
    scorer = FakeScorer([1.2, 2.1, 2.9, 4.2, 4.8, "parse", "image"])
    report = evaluate(scorer, records, tmp_path / "out", think=False, n=3, temperature=0.7, name="dev")
    assert scorer.calls == [dict(images=[r.image for r in records], think=False, n=3, temperature=0.7)]
    assert report["counts"] == {"total": 7, "ok": 5, "parse_error": 1, "image_error": 1, "backend_error": 0}
    assert report["parse_failure_rate"] == pytest.approx(1 / 6)  # parse errors among the model's answers
    assert report["metrics"]["n"] == 5 and report["metrics"]["srcc"] == pytest.approx(1.0)
    assert (report["model"], report["profile"], report["mode"], report["n"]) == ("fake/model", "qponder",
                                                                                  "no-think", 3)
    saved = json.loads((tmp_path / "out" / "dev.json").read_text())
    assert saved["rows"][5] == {"image": "img5.png", "mos": 2.5, "score": None, "status": "parse_error",
                                "error": "no score"}
    assert saved["metrics"]["srcc"] == pytest.approx(1.0)
    assert (tmp_path / "out" / "dev.png").read_bytes().startswith(PNG_SIGNATURE)


def test_evaluate_nothing_scored_writes_strict_json(tmp_path):
    pytest.importorskip("matplotlib")
    report = evaluate(FakeScorer(["parse", "parse"]), [Rec("a.png", 2.0), Rec("b.png", 4.0)], tmp_path)
    assert report["parse_failure_rate"] == 1.0 and math.isnan(report["metrics"]["srcc"])
    text = (tmp_path / "eval.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert saved["metrics"]["srcc"] is None and saved["metrics"]["notes"]
    assert (tmp_path / "eval.png").read_bytes().startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------- evaluate (tiny trained model)


@pytest.mark.model
def test_evaluate_smoke_model(scorer, tmp_path):
    from smoke import solid_image

    records = []
    for i, brightness in enumerate([0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95]):
        path = tmp_path / f"img{i}.png"
        solid_image(brightness, 64, seed=i).save(path)
        records.append(Rec(str(path), 1 + 4 * brightness))
    records.append(Rec(str(tmp_path / "missing.png"), 3.0))
    report = evaluate(scorer, records, tmp_path / "eval", name="smoke")
    saved = json.loads((tmp_path / "eval" / "smoke.json").read_text())
    assert set(METRIC_KEYS) <= set(saved["metrics"])
    assert saved["counts"]["image_error"] == 1 and saved["counts"]["total"] == 8
    assert saved["profile"] == "qponder" and saved["mode"] == "think" and saved["model"] == str(scorer.model_id)
    assert len(saved["rows"]) == 8 and saved["rows"][-1]["status"] == "image_error"
    assert report["metrics"]["srcc"] > 0.5, report["rows"]
    png = (tmp_path / "eval" / "smoke.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """An untrained tiny base, a LoRA adapter on its language model with visibly non-zero weights, and the
    reference logits of base and adapter on one fixed input."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from smoke import build_tiny_model, solid_image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from qponder_plugin.default_plugins.profiles import QPONDER

    root = tmp_path_factory.mktemp("export")
    base = build_tiny_model(root / "base", trained=False)
    processor = AutoProcessor.from_pretrained(base)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QPONDER.think_prompt}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt + "<think>"], images=[solid_image(0.3)], return_tensors="pt")

    model = AutoModelForImageTextToText.from_pretrained(base).eval()
    with torch.no_grad():
        base_logits = model(**inputs).logits
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.5)  # lora_B starts at zero: make the merge visible
    peft_model.eval()
    with torch.no_grad():
        peft_logits = peft_model(**inputs).logits
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    return dict(root=root, base=base, adapter=adapter, inputs=inputs, base_logits=base_logits,
                peft_logits=peft_logits)


def test_model_card_names_its_origin():
    from qponder_plugin.training.export import model_card

    scratch = model_card({"weights": "trained from scratch"}, base_model=None, out_name="export")
    assert "- Base model: none\n- Weights: trained from scratch\n" in scratch
    unknown = model_card({}, base_model=None)
    assert "- Base model: not recorded\n- Weights: not recorded\n" in unknown
    tuned = model_card({"weights": "ignored: the base says it"}, base_model="org/base", adapter=True)
    assert "- Base model: `org/base`\n- Weights: LoRA adapter merged into `org/base`\n" in tuned
    assert 'load_scorer("path/to/export")' in scratch
    assert "Variants tried" not in scratch
    tried = model_card({"variants": ["more blocks: too slow", "a larger input: too slow"]}, base_model=None)
    assert tried.endswith("## Variants tried\n\n- more blocks: too slow\n- a larger input: too slow\n")


@pytest.mark.model
def test_export_merges_lora(lora):
    import torch
    from qponder_plugin.training.export import export
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_files = sorted(p.name for p in lora["adapter"].iterdir())
    assert "adapter_config.json" in adapter_files
    card = {"data": {"dataset": "AGIQA-3K", "train images": 2100},
            "settings": {"method": "SFT + LoRA", "lora_r": 4, "epochs": 1},
            "metrics": {"agiqa-3k test": {"srcc": 0.81234, "plcc": 0.85, "krcc": 0.62, "rmse": 0.41, "n": 900}}}
    out = export(lora["adapter"], lora["root"] / "merged", card=card)

    assert sorted(p.name for p in lora["adapter"].iterdir()) == adapter_files  # input untouched
    assert list(out.glob("*.safetensors")) and not (out / "adapter_config.json").exists()
    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
                 "chat_template.jinja", "generation_config.json", "qponder.json", "README.md"):
        assert (out / name).is_file(), name
    assert AutoProcessor.from_pretrained(out).tokenizer.padding_side == "left"  # for batched generation

    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        logits = merged(**lora["inputs"]).logits
    torch.testing.assert_close(logits, lora["peft_logits"], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits, lora["base_logits"], atol=1e-3)
    base = AutoModelForImageTextToText.from_pretrained(lora["base"])
    base_state, merged_state = base.state_dict(), merged.state_dict()
    changed = {k for k in base_state if not torch.equal(base_state[k], merged_state[k])}
    assert changed and all("language_model" in k and ("q_proj" in k or "v_proj" in k) for k in changed)

    info = json.loads((out / "qponder.json").read_text())
    assert info["profile"] == "qponder" and info["merged_adapter"] is True
    assert info["base_model"] == str(lora["base"])
    assert info["metrics"]["agiqa-3k test"]["srcc"] == pytest.approx(0.81234)

    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n")
    yaml = pytest.importorskip("yaml")
    front = yaml.safe_load(readme.split("---\n")[1])
    assert front["base_model"] == str(lora["base"]) and front["library_name"] == "transformers"
    assert "image-quality-assessment" in front["tags"]
    for heading in ("## Data", "## Training settings", "## Evaluation", "## Usage", "## Limits"):
        assert heading in readme
    assert "AGIQA-3K" in readme and "SFT + LoRA" in readme
    assert "| agiqa-3k test | 0.8123 |" in readme
    assert "not recorded" in readme.split("## Limits")[1]  # no "limits" key in the card
    assert "load_scorer" in readme


@pytest.mark.model
def test_exported_model_loads_in_scorer(lora):
    from qponder_plugin.training.export import export
    from smoke import solid_image

    from qponder_plugin import Assessment, load_scorer

    out = export(lora["adapter"], lora["root"] / "for-scorer", base_model=lora["base"])
    with load_scorer(out, max_new_tokens=32) as scorer:
        result = scorer.assess(solid_image(0.5, 64))
    assert isinstance(result, Assessment)
    assert result.profile == "qponder"  # untrained: status may well be parse_error


@pytest.mark.model
def test_export_refuses_unsafe_out_dirs(lora):
    from qponder_plugin.training.export import ExportError, export

    target = lora["root"] / "twice"
    export(lora["adapter"], target)
    (target / "stale.bin").write_text("old")
    with pytest.raises(ExportError, match="not empty"):
        export(lora["adapter"], target)
    export(lora["adapter"], target, overwrite=True)
    assert not (target / "stale.bin").exists() and (target / "qponder.json").is_file()
    for inside in (lora["adapter"], lora["root"], lora["base"]):  # the input, a folder holding it, the base
        with pytest.raises(ExportError, match="refusing"):
            export(lora["adapter"], inside, overwrite=True)
    assert (lora["adapter"] / "adapter_config.json").is_file() and (lora["base"] / "config.json").is_file()
    assert not list(lora["root"].glob(".*.partial"))


@pytest.mark.model
def test_export_full_model(lora):
    import torch
    from qponder_plugin.training.export import export
    from transformers import AutoModelForImageTextToText

    umask = os.umask(0o022)
    try:
        out = export(lora["base"], lora["root"] / "full", card={"limits": "Smoke model: judges nothing."})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's owner-only 0700: others can read it
    assert {stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()} == {0o644}
    info = json.loads((out / "qponder.json").read_text())
    assert info["profile"] == "qponder" and info["merged_adapter"] is False
    assert info["name"] == "qponder-smoke"  # fields of the checkpoint's own qponder.json are kept
    readme = (out / "README.md").read_text()
    assert "Smoke model: judges nothing." in readme and "## Data\n\n_not recorded_" in readme
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**lora["inputs"]).logits, lora["base_logits"])
