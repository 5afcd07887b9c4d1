"""The ComfyUI pack's nodes without a server: real tensors and the real smoke model, with a stand-in for the running
ComfyUI's services (progress bar, Cancel, ExecutionBlocker, output folder). tests/test_comfyui_servers.py runs the
same nodes in two real ComfyUI servers."""

import json
import math
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

torch = pytest.importorskip("torch")

from qponder_plugin.comfyui import models, nodes, pack, v1  # noqa: E402
from qponder_plugin.comfyui.install import MARKER  # noqa: E402
from qponder_plugin.comfyui.models import ModelSettings  # noqa: E402

from qponder_plugin.cli import build  # noqa: E402
from qponder_plugin.gate_file import GateFile, GateFileError, write_gate_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "comfyui"
NODE_IDS = ["QPonderModelLoader", "QPonderAssess", "QPonderGate", "QPonderRank", "QPonderSaveImage"]


class Interrupted(BaseException):
    """What ComfyUI's throw_exception_if_processing_interrupted raises (a BaseException there too)."""


class StandInHost:
    """Stands in for the running ComfyUI's services: records progress, interrupts on request, saves to tmp."""

    def __init__(self, output: Path, blocker: bool = True, interrupt_after: int | None = None):
        self.output, self.has_blocker, self.interrupt_after = output, blocker, interrupt_after
        self.totals, self.steps, self.checks, self.interrupted, self.release = [], 0, 0, False, None

    def progress(self, total):
        self.totals.append(total)

        def step():
            self.steps += 1
        return step

    def check_interrupted(self):
        self.checks += 1
        if self.interrupt_after is not None and self.checks > self.interrupt_after:
            raise Interrupted

    def interrupt(self):
        self.interrupted = True
        raise Interrupted

    def blocker(self):
        return BLOCKED if self.has_blocker else None

    def llm_folders(self):
        return {}

    def save_path(self, prefix, width, height):
        self.output.mkdir(parents=True, exist_ok=True)
        return str(self.output), prefix, 1, ""

    def metadata_enabled(self):
        return True

    def on_unload(self, release):
        self.release = release


BLOCKED = object()


@pytest.fixture
def host(tmp_path, monkeypatch):
    stand_in = StandInHost(tmp_path / "output")
    monkeypatch.setattr(nodes, "host", stand_in)
    yield stand_in
    models.release()


@pytest.fixture(scope="module")
def fast(smoke_model):
    return ModelSettings(str(smoke_model), think=False)


def batch(*levels: float, size: int = 32):
    """A ComfyUI IMAGE batch, [B,H,W,C] floats in 0..1: one flat grey frame per brightness level."""
    return torch.stack([torch.full((size, size, 3), level) for level in levels])


def test_assess_scores_each_frame_of_a_batch_with_progress(host, fast):
    result = nodes.assess(batch(0.9, 0.1, 0.5), model=fast)
    scores, reasoning = result.values
    assert len(scores) == len(reasoning) == 3
    assert scores[0] > scores[2] > scores[1]  # the smoke model scores brightness
    assert host.totals == [3] and host.steps == 3
    assert result.ui()["text"][0].splitlines()[0].startswith("#1 ")


def test_assess_with_reasoning(host, smoke_model):
    result = nodes.assess(batch(0.9), model=ModelSettings(str(smoke_model), think=True))
    assert "Exposure" in result.values[1][0]


def test_gate_splits_a_batch_and_keeps_scores_in_input_order(host, fast):
    images = batch(0.1, 0.9, 0.95, 0.05)
    passed, rejected, scores, n_passed, n_rejected, passed_scores, rejected_scores = nodes.gate(
        images, 3.0, "fast", "error", model=fast).values
    assert (n_passed, n_rejected) == (2, 2)
    assert torch.equal(passed, images[[1, 2]]) and torch.equal(rejected, images[[0, 3]])
    assert passed_scores == [scores[1], scores[2]] and rejected_scores == [scores[0], scores[3]]
    assert min(passed_scores) >= 3.0 > max(rejected_scores)


def test_gate_blocks_an_empty_side_and_never_passes_an_empty_batch(host, fast):
    images = batch(0.1, 0.2)
    passed, rejected, scores, n_passed, n_rejected, passed_scores, _ = nodes.gate(
        images, 4.5, "fast", "error", model=fast).values
    assert passed is BLOCKED and passed_scores is BLOCKED
    assert torch.equal(rejected, images) and (n_passed, n_rejected) == (0, 2) and len(scores) == 2


def test_gate_without_a_blocker_raises_a_clear_error(host, fast):
    host.has_blocker = False
    with pytest.raises(nodes.EmptySideError, match=r"no image passed the threshold 4.5 \(0 passed, 2 rejected\)"):
        nodes.gate(batch(0.1, 0.2), 4.5, "fast", "error", model=fast)
    assert not host.interrupted


def test_gate_without_a_blocker_can_interrupt_instead(host, fast):
    host.has_blocker = False
    with pytest.raises(Interrupted):
        nodes.gate(batch(0.9, 0.8), 1.5, "fast", "interrupt", model=fast)  # all pass: rejected is empty
    assert host.interrupted


def test_gate_takes_threshold_strategy_and_model_from_a_gate_file(host, fast, tmp_path):
    path = tmp_path / "gate.json"
    write_gate_file(path, GateFile(3.0, fast.model, "qponder", "fast", 0.25))
    # no model connected: the file's; its threshold 3.0 and strategy fast, not the inputs' 4.9 and think
    result = nodes.gate(batch(0.9, 0.1), 4.9, "think", "error", gate_file=str(path))
    assert result.values[3:5] == (1, 1)
    assert result.text[0].startswith(f"gate file {path}: threshold 3, strategy fast")
    assert all(" — " not in text for text in result.text[1:])  # no reasoning: no-think readings decided
    assert models.loaded() == [ModelSettings(fast.model, profile="qponder").key]
    assert nodes.gate(batch(0.9, 0.1), 4.9, "think", "error", model=fast, gate_file=str(path)).values[3:5] == (1, 1)
    with pytest.raises(GateFileError, match=f"calibrated for model '{fast.model}', not '.*nano'"):
        nodes.gate(batch(0.9), 3.0, "fast", "error", model=ModelSettings("nano"), gate_file=str(path))
    types = v1.mappings()["NODE_CLASS_MAPPINGS"]["QPonderGate"].INPUT_TYPES()
    assert types["optional"]["gate_file"] == ("STRING", {"tooltip": nodes.NODES[2].inputs[-1].tooltip,
                                                         "default": ""})


@pytest.mark.parametrize("run", [
    lambda images, settings: nodes.assess(images, model=settings),
    lambda images, settings: nodes.gate(images, 3.0, "fast", "error", model=settings),
    lambda images, settings: nodes.rank(images, "top_k", 1, 0.5, model=settings),
], ids=["assess", "gate", "rank"])
def test_cancel_stops_scoring_between_batches(host, fast, run):
    scorer = models.scorer_for(fast)
    host.interrupt_after = 1
    with pytest.raises(Interrupted):
        run(batch(*[0.5] * (scorer.batch_size + 1)), fast)
    assert host.steps == scorer.batch_size  # the first batch was scored, the second never started


def test_rank_keeps_the_best_first(host, fast):
    images = batch(0.3, 0.95, 0.1, 0.7)
    ranked, scores, reasoning = nodes.rank(images, "top_k", 2, 0.25, model=fast).values
    assert torch.equal(ranked, images[[1, 3]]) and scores == sorted(scores, reverse=True) and len(reasoning) == 2
    ranked, scores, _ = nodes.rank(images, "top_fraction", 4, 0.6, model=fast).values  # ceil(0.6 * 4) = 3
    assert torch.equal(ranked, images[[1, 3, 0]])


def test_save_image_writes_the_score_beside_comfyuis_own_chunks(host, fast):
    images = [batch(0.9, 0.1)]
    result = nodes.save_image(images, ["q"], scores=[4.25, 1.5], reasoning=["bright", ""],
                              prompt={"1": {"class_type": "LoadImage"}}, extra_pnginfo={"workflow": {"nodes": []}})
    files = [host.output / image["filename"] for image in result.ui()["images"]]
    first, second = (Image.open(f) for f in files)
    assert first.text["qponder_score"] == "4.2500" and first.text["qponder_reasoning"] == "bright"
    assert json.loads(first.text["prompt"]) == {"1": {"class_type": "LoadImage"}}
    assert json.loads(first.text["workflow"]) == {"nodes": []}
    assert second.text["qponder_score"] == "1.5000" and "qponder_reasoning" not in second.text
    assert first.getpixel((0, 0)) == (229, 229, 229)


def test_save_image_scores_by_itself_and_refuses_mismatched_scores(host, fast):
    result = nodes.save_image([batch(0.9), batch(0.2)], ["q"], model=[fast])
    saved = [Image.open(host.output / image["filename"]) for image in result.ui()["images"]]
    assert float(saved[0].text["qponder_score"]) > float(saved[1].text["qponder_score"])
    with pytest.raises(ValueError, match="2 images but 1 scores"):
        nodes.save_image([batch(0.9, 0.2)], ["q"], scores=[3.0])


def test_unscorable_image_is_nan_never_a_made_up_score(host, fast):
    scores, reasoning = nodes.assess(torch.zeros((1, 0, 4, 3)), model=fast).values
    assert math.isnan(scores[0]) and reasoning[0].startswith("[image_error]")


def test_model_cache_loads_once_and_frees_on_request(host, smoke_model):
    settings = ModelSettings(str(smoke_model), think=False)
    found = []
    threads = [threading.Thread(target=lambda: found.append(models.scorer_for(settings))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(s) for s in found}) == 1 and models.loaded() == [settings.key]
    assert models.scorer_for(ModelSettings(str(smoke_model), think=True)) is found[0]  # think is not a load key
    nodes.assess(batch(0.5), model=settings)
    assert host.release is models.release  # the node hooked ComfyUI's "Unload models"
    assert host.release() == 1 and models.loaded() == [] and found[0].backend is None


def test_keep_loaded_off_frees_the_model_after_the_node(host, smoke_model):
    settings = ModelSettings(str(smoke_model), think=False, keep_loaded=False)
    nodes.assess(batch(0.5), model=settings)
    assert models.loaded() == []


def test_model_loader_loads_and_returns_settings(host, smoke_model):
    (settings,) = nodes.load_model("nano", str(smoke_model), "transformers", "cpu", False, True).values
    assert settings == ModelSettings(str(smoke_model), "transformers", "cpu", False, True)
    assert models.loaded() == [settings.key]
    (default,) = nodes.load_model("nano", "", "transformers", "auto", True, False).values
    assert default.model is None and models.loaded() == [settings.key]  # keep_loaded off: loaded by the nodes


def test_v1_classes_carry_the_node_ids_and_run_the_shared_nodes(host, fast):
    mappings = v1.mappings()
    assert list(mappings["NODE_CLASS_MAPPINGS"]) == NODE_IDS
    gate = mappings["NODE_CLASS_MAPPINGS"]["QPonderGate"]
    assert gate.CATEGORY == "image/quality" and gate.RETURN_NAMES[:5] == (
        "passed", "rejected", "scores", "passed_count", "rejected_count")
    assert gate.OUTPUT_IS_LIST == (False, False, True, False, False, True, True)
    types = gate.INPUT_TYPES()
    assert types["required"]["strategy"][0] == ["cascade", "fast", "think"]
    assert types["optional"]["model"][0] == "QPONDER_MODEL"
    out = getattr(gate(), gate.FUNCTION)(images=batch(0.9, 0.1), threshold=3.0, strategy="fast",
                                         without_blocker="error", model=fast)
    assert out["result"][3:5] == (1, 1) and len(out["ui"]["text"]) == 1
    save = mappings["NODE_CLASS_MAPPINGS"]["QPonderSaveImage"]
    assert save.INPUT_IS_LIST and save.OUTPUT_NODE and save.INPUT_TYPES()["hidden"]["prompt"] == "PROMPT"
    done = getattr(save(), save.FUNCTION)(images=[batch(0.5)], filename_prefix=["v1"], scores=[2.0],
                                          prompt=[{"p": 1}], extra_pnginfo=[None])
    assert Image.open(host.output / done["ui"]["images"][0]["filename"]).text["prompt"] == '{"p": 1}'


def test_pack_outside_comfyui_offers_v1_mappings_and_imports_no_comfyui():
    exported = pack.exports()
    assert list(exported["NODE_CLASS_MAPPINGS"]) == NODE_IDS
    import sys

    assert "comfy" not in sys.modules and "comfy_api" not in sys.modules


def test_install_writes_a_loader_and_never_overwrites_a_users_folder(tmp_path):
    runner, cli = CliRunner(), build()
    assert runner.invoke(cli, ["comfyui", "install", str(tmp_path)]).exit_code != 0  # no custom_nodes/
    (tmp_path / "custom_nodes").mkdir()
    done = runner.invoke(cli, ["comfyui", "install", str(tmp_path)])
    loader = tmp_path / "custom_nodes" / "qponder" / "__init__.py"
    assert done.exit_code == 0, done.output
    assert loader.read_text().startswith(MARKER) and "qponder_plugin.comfyui.pack" in loader.read_text()
    assert runner.invoke(cli, ["comfyui", "install", str(tmp_path)]).exit_code == 0  # its own loader: updated
    mine = tmp_path / "custom_nodes" / "mine"
    mine.mkdir()
    (mine / "__init__.py").write_text("users = 1\n")
    refused = runner.invoke(cli, ["comfyui", "install", str(tmp_path), "--name", "mine"])
    assert refused.exit_code != 0 and "left as it is" in refused.output
    assert (mine / "__init__.py").read_text() == "users = 1\n"


@pytest.mark.parametrize("name", ["score-and-save", "gate-before-save", "rank-top-k"])
def test_example_workflow_ui_and_api_formats_agree(name):
    ui = json.loads((EXAMPLES / f"{name}.json").read_text())
    api = json.loads((EXAMPLES / f"{name}.api.json").read_text())
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        inputs = api[str(node["id"])]["inputs"]
        for slot in node["inputs"]:
            _, source, output, target, _, _ = links[slot["link"]]
            assert inputs[slot["name"]] == [str(source), output] and target == node["id"]
        widgets = [value for value in inputs.values() if not isinstance(value, list)]
        assert node["widgets_values"][:len(widgets)] == widgets
