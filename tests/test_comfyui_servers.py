"""The node pack in two real ComfyUI servers, one at a time: ComfyUI 0.30.0 (V3 schema, ExecutionBlocker), with
this repository cloned into custom_nodes/, and the early-2024 ComfyUI (V1 only), with the pack linked in by
``qponder comfyui install``. The API-format example workflows run on the AGIQA sample images and a broken file.

Both servers run in this Python (its comfyui-test extra); their trees come from scripts/comfyui-env's cache."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from smoke import solid_image

from qponder_plugin.cli import build

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "comfyui"
SAMPLES = sorted((ROOT / "examples" / "images").glob("*.jpg"))
NODE_IDS = ["QPonderModelLoader", "QPonderAssess", "QPonderGate", "QPonderRank", "QPonderSaveImage"]
QWEN3_ALIASES = ["mr-iqa", "iqa-t1", "mr-iqa-2", "q-realign-mini", "zoom-iqa-7b", "evoquality"]
NEEDS = ["aiohttp", "torchsde", "einops", "kornia", "scipy", "yaml", "psutil", "av", "alembic", "spandrel"]


class Server:
    """A ComfyUI process on a free local port, driven as ComfyUI's own tests do."""

    def __init__(self, name: str, command: list[str], cwd: Path, input_dir: Path, output_dir: Path, log: Path):
        self.name, self.input, self.output, self.log = name, input_dir, output_dir, log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command += ["--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 240
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"ComfyUI {name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/object_info/LoadImage")
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"ComfyUI {name} did not answer within 240 s:\n{self.log_tail()}")
                time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def run(self, graph: dict, timeout: float = 600) -> dict:
        """POST an API-format graph, poll /history until it is done, and return its history entry."""
        prompt_id = json.loads(self.post("/prompt", {"prompt": graph}))["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.3)
        pytest.fail(f"prompt {prompt_id} not done within {timeout} s:\n{self.log_tail()}")

    def saved(self, prefix: str) -> list[Path]:
        return sorted(self.output.glob(f"{prefix}_*.png"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def comfyui_tree(name: str) -> Path:
    """The cached server tree (fetched on first use); the test skips, saying why, when it cannot be had."""
    missing = [module for module in NEEDS if not _importable(module)]
    if missing:
        pytest.skip(f"ComfyUI's requirements are not installed here ({', '.join(missing)}): "
                    "pip install -e '.[comfyui-test]' (the dev extra includes it)")
    done = subprocess.run([str(ROOT / "scripts" / "comfyui-env"), name], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        pytest.skip(f"scripts/comfyui-env {name} could not fetch the ComfyUI tree: {done.stderr.strip()[-800:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module", params=["current", "v1"])
def server(request, tmp_path_factory):
    """One server at a time: ComfyUI 0.30.0 with the repository cloned in, then the early-2024 one with the
    pip-installed pack linked in by ``qponder comfyui install``."""
    tree, home = comfyui_tree(request.param), tmp_path_factory.mktemp(f"comfyui-{request.param}")
    if request.param == "current":
        base = home / "base"
        for folder in ("custom_nodes", "input", "output", "front-end"):
            (base / folder).mkdir(parents=True)
        (base / "custom_nodes" / "qponder-plugin").symlink_to(ROOT, target_is_directory=True)  # the clone way
        command = [sys.executable, str(tree / "main.py"), "--base-directory", str(base), "--front-end-root",
                   str(base / "front-end"), "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
        cwd, input_dir, output_dir = base, base / "input", base / "output"
    else:
        comfy = home / "ComfyUI"
        shutil.copytree(tree, comfy, symlinks=True)  # 5 MB: the old server writes into its own tree
        installed = CliRunner().invoke(build(), ["comfyui", "install", str(comfy)])  # the pip way
        assert installed.exit_code == 0, installed.output
        command = [sys.executable, str(comfy / "main.py")]
        cwd, input_dir, output_dir = comfy, comfy / "input", comfy / "output"
    for sample in SAMPLES:
        shutil.copy(sample, input_dir)
    (input_dir / "broken.jpg").write_bytes(SAMPLES[0].read_bytes()[:600])  # a JPEG cut off after its header
    running = Server(request.param, command, cwd, input_dir, output_dir, home / "server.log")
    yield running
    running.stop()


def example(name: str, **changes) -> dict:
    """An API-format example workflow, with ``{"node.input": value}`` changes."""
    graph = json.loads((EXAMPLES / f"{name}.api.json").read_text())
    for key, value in changes.items():
        node, field = key.split("__")
        graph[node]["inputs"][field] = value
    return graph


def ui_text(entry: dict, node: str) -> str:
    return "\n".join(entry["outputs"][node]["text"])


def metadata(path: Path) -> dict:
    with Image.open(path) as image:
        return dict(image.text)


def test_the_five_nodes_are_registered(server):
    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert info[node_id]["category"] == "image/quality", node_id
    assert info["QPonderGate"]["output_name"][:5] == ["passed", "rejected", "scores", "passed_count",
                                                       "rejected_count"]
    assert info["QPonderSaveImage"]["output_node"] is True
    if server.name == "current":  # served by the V3 schema: its node info carries the V3-only fields
        assert {"price_badge", "output_matchtypes"} <= set(info["QPonderGate"])
        assert "price_badge" not in info["SaveImage"]  # a V1 node of the same server, for contrast


def test_the_loader_offers_the_2026_checkpoints(server):
    spec = server.get("/object_info/QPonderModelLoader")["QPonderModelLoader"]["input"]["required"]["model"]
    choices = spec[1]["options"] if spec[0] == "COMBO" else spec[0]  # V3 combos list their options apart
    assert {"nano", *QWEN3_ALIASES} <= set(choices)


@pytest.mark.parametrize(("server", "qwen3_model"), [("current", "qwen3-vl"), ("current", "qwen3.5")],
                         indirect=True)
def test_a_gate_on_a_qwen3_model(server, qwen3_model):
    """The tiny Qwen3-VL (its template opens <think>) or Qwen3.5 (its template takes ``enable_thinking``), each
    trained to score brightness, loaded by folder, gating with reasoning: the dark image is rejected into a
    PreviewImage, the bright one passes into a SaveImage."""
    for name, brightness in (("qwen3-dark.png", 0.1), ("qwen3-bright.png", 0.9)):
        solid_image(brightness, 64, seed=1).save(server.input / name)
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "qwen3-dark.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "qwen3-bright.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "QPonderModelLoader", "inputs": {"model": "nano", "custom_model": str(qwen3_model[1]),
              "backend": "transformers", "device": "cpu", "think": True, "keep_loaded": False}},
        "5": {"class_type": "QPonderGate", "inputs": {"images": ["3", 0], "threshold": 3.0, "strategy": "think",
              "without_blocker": "error", "model": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"{qwen3_model[0]}/passed"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", server.log_tail()
    dark, bright = ui_text(entry, "5").splitlines()  # "#1 2.31 rejected — Exposure: ..."
    assert dark.startswith("#1 ") and " rejected — Exposure:" in dark, dark
    assert bright.startswith("#2 ") and " passed — Exposure:" in bright, bright
    assert float(dark.split()[1]) < 3.0 <= float(bright.split()[1])
    assert len(server.saved(f"{qwen3_model[0]}/passed")) == 1 and len(entry["outputs"]["7"]["images"]) == 1


def test_gate_before_save_saves_each_side_with_its_score(server):
    entry = server.run(example("gate-before-save", **{"5__filename_prefix": "gate/passed",
                                                      "6__filename_prefix": "gate/rejected"}))
    assert entry["status"]["status_str"] == "success", server.log_tail()
    lines = ui_text(entry, "4").splitlines()
    assert lines[0].startswith("#1 ") and lines[0].endswith("passed") and lines[1].endswith("rejected")
    (passed,), (rejected,) = server.saved("gate/passed"), server.saved("gate/rejected")
    assert float(metadata(passed)["qponder_score"]) >= 3.0 > float(metadata(rejected)["qponder_score"])
    assert json.loads(metadata(passed)["prompt"])["4"]["class_type"] == "QPonderGate"  # ComfyUI's own chunk


def test_an_all_rejected_batch_saves_nothing_on_the_passed_side(server):
    graph = example("gate-before-save", **{"4__threshold": 4.5, "5__filename_prefix": "none/passed",
                                           "6__filename_prefix": "none/rejected"})
    entry = server.run(graph)
    if server.name == "current":  # ExecutionBlocker: the passed side's SaveImage does not run, the rest does
        assert entry["status"]["status_str"] == "success", server.log_tail()
        assert "5" not in entry["outputs"] and "6" in entry["outputs"]
        assert server.saved("none/passed") == [] and len(server.saved("none/rejected")) == 2
        assert all(float(metadata(p)["qponder_score"]) < 4.5 for p in server.saved("none/rejected"))
    else:  # no ExecutionBlocker: the documented fallback stops the prompt at the gate, with a clear error
        assert entry["status"]["status_str"] == "error"
        events = dict(entry["status"]["messages"])
        assert events["execution_error"]["node_type"] == "QPonderGate"
        assert "no image passed the threshold 4.5 (0 passed, 2 rejected)" in events["execution_error"][
            "exception_message"]
        assert server.saved("none/passed") == server.saved("none/rejected") == []


def test_the_interrupt_fallback_ends_the_prompt_quietly(server):
    entry = server.run(example("gate-before-save", **{
        "4__threshold": 4.6, "4__without_blocker": "interrupt", "5__filename_prefix": "stop/passed",
        "6__filename_prefix": "stop/rejected"}))
    events = dict(entry["status"]["messages"])
    if server.name == "current":  # with ExecutionBlocker the option has nothing to do: only the empty side stops
        assert entry["status"]["status_str"] == "success" and "execution_interrupted" not in events
        assert server.saved("stop/passed") == [] and len(server.saved("stop/rejected")) == 2
    else:
        assert events["execution_interrupted"]["node_type"] == "QPonderGate" and "execution_error" not in events
        assert server.saved("stop/passed") == server.saved("stop/rejected") == []


def test_score_and_save_writes_score_and_reasoning(server):
    entry = server.run(example("score-and-save", **{"4__filename_prefix": "scored/img"}))
    assert entry["status"]["status_str"] == "success", server.log_tail()
    (saved,) = server.saved("scored/img")
    chunks = metadata(saved)
    assert 1.0 <= float(chunks["qponder_score"]) <= 5.0 and len(chunks["qponder_reasoning"]) > 20
    assert f"{float(chunks['qponder_score']):.2f}" in ui_text(entry, "3")


def test_rank_top_k_saves_the_best_two_best_first(server):
    entry = server.run(example("rank-top-k", **{"8__filename_prefix": "rank/best"}))
    assert entry["status"]["status_str"] == "success", server.log_tail()
    first, second = server.saved("rank/best")
    assert float(metadata(first)["qponder_score"]) >= float(metadata(second)["qponder_score"])
    assert "rank 1" in ui_text(entry, "7") and "#2 " not in ui_text(entry, "7")  # glide (#2) scores lowest


def test_a_broken_file_fails_at_its_loader_and_saves_nothing(server):
    entry = server.run(example("score-and-save", **{"1__image": "broken.jpg", "4__filename_prefix": "broken/img"}))
    events = dict(entry["status"]["messages"])
    assert entry["status"]["status_str"] == "error" and events["execution_error"]["node_id"] == "1"
    assert server.saved("broken/img") == [] and "3" not in entry["outputs"]


def test_unload_models_frees_the_model_and_the_next_prompt_loads_it_again(server):
    server.run(example("gate-before-save", **{"5__filename_prefix": "unload/a", "6__filename_prefix": "unload/b"}))
    deadline = time.monotonic() + 60
    while "QPonder: freed" not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, server.log_tail()
        # The early-2024 server's worker misses a /free that lands after it read its flags for a finished prompt
        # (while it collects garbage) and then sleeps until the next prompt: post it again until the unload is logged.
        server.post("/free", {"unload_models": True})
        time.sleep(2)
    entry = server.run(example("gate-before-save", **{"4__threshold": 3.1, "5__filename_prefix": "unload/c",
                                                      "6__filename_prefix": "unload/d"}))
    assert entry["status"]["status_str"] == "success" and len(server.saved("unload/c")) == 1


def test_cancel_during_scoring_stops_the_assess_node(server):
    """ComfyUI's Cancel (POST /interrupt) lands while QPonderAssess scores one of its first batches of 8 (of 24
    images): the node itself stops before the next batch, so the interruption is reported at that node and nothing
    behind it runs."""
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": SAMPLES[0].name}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 24}},
        "3": {"class_type": "QPonderModelLoader", "inputs": {"model": "nano", "custom_model": "", "backend":
              "transformers", "device": "auto", "think": False, "keep_loaded": True}},
        "4": {"class_type": "QPonderAssess", "inputs": {"images": ["2", 0], "model": ["3", 0]}},
        "5": {"class_type": "QPonderSaveImage", "inputs": {"images": ["2", 0], "scores": ["4", 0],
                                                           "filename_prefix": "cancel/img"}},
    }
    server.run(example("gate-before-save", **{"5__filename_prefix": "cancel/warm", "6__filename_prefix":
                                              "cancel/warm"}))  # the model is loaded: Cancel lands in scoring
    prompt_id = json.loads(server.post("/prompt", {"prompt": graph}))["prompt_id"]
    while not server.get("/queue")["queue_running"]:
        time.sleep(0.1)
    time.sleep(1.5)
    server.post("/interrupt", {})
    deadline = time.monotonic() + 300
    while (entry := server.get(f"/history/{prompt_id}").get(prompt_id)) is None:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.3)
    events = dict(entry["status"]["messages"])
    assert events["execution_interrupted"]["node_type"] == "QPonderAssess", events
    assert server.saved("cancel/img") == []
