"""The vllm and openai backends on a real engine: vLLM's CPU build in its cached venv (``scripts/engine-env``),
with the bundled nano model, offline and behind its OpenAI-compatible server.

Both must match the transformers backend: the same greedy texts, and scores within ``TOLERANCE`` (with exact digit
log-probabilities the measured difference is 0 at 4 decimals). The faults are the engine's own: a request it
refuses, and a server killed with -9 mid-run. The tiny Qwen3-VL and Qwen3.5 models (conftest's ``qwen3_model``) are
compared the same way on 4 images, and the server's rendering of the openai backend's requests is checked against
``chat_text`` token for token. vLLM's CPU build runs Qwen3.5 in bfloat16 only: its scores are held to
``BF16_TOLERANCE`` against the float32 reference.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from engines import CPU_ENGINE, engine_env, engine_python, stop, vllm_offline, vllm_server  # noqa: E402

from qponder_plugin.scorer import Scorer  # noqa: E402
from qponder_plugin.spec import NANO  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-3  # score points on 1-5; scores are rounded to 4 decimals


@pytest.fixture(scope="module")
def vllm_python():
    try:
        return engine_python()
    except RuntimeError as exc:  # no network for pip on a fresh machine, say
        pytest.skip(f"the vLLM engine venv could not be built: {exc}")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The 5 sample images and 19 synthetic ones of assorted sizes, modes and defects (blur, noise, flat)."""
    folder = tmp_path_factory.mktemp("engine-images")
    rng = np.random.default_rng(0)
    for i in range(19):
        size = (int(rng.integers(48, 400)), int(rng.integers(48, 400)))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(i % 5))
        if i % 4 == 0:
            image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        image.save(folder / f"synthetic_{i:02d}.{'png' if i % 2 else 'jpg'}")
    return sorted(str(p) for p in (ROOT / "examples" / "images").glob("*.jpg")) + \
        sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="module")
def reference(images):
    """The transformers backend's rows, by (source, mode)."""
    pytest.importorskip("transformers", reason="needs the transformers extra")
    with Scorer("nano") as scorer:
        return {(r.source, r.mode): r.to_dict() for think in (True, False)
                for r in scorer.assess_batch(images, think=think)}


def compare(rows, reference) -> float:
    """Assert every row is ok with the reference's text; return the largest score difference."""
    assert [r["status"] for r in rows] == ["ok"] * len(rows), [r["error"] for r in rows if r["status"] != "ok"]
    for row in rows:
        assert row["raw"] == reference[row["source"], row["mode"]]["raw"], row["source"]
        assert row["method"] == "probability"
    difference = max(abs(r["score"] - reference[r["source"], r["mode"]]["score"]) for r in rows)
    print(f"{rows[0]['backend']} {rows[0]['mode']}: {len(rows)} images, max |score difference| {difference:.4f}")
    return difference


@pytest.mark.parametrize("think", [True, False], ids=["think", "no-think"])
def test_offline_engine_matches_transformers(vllm_python, images, reference, think):
    rows, _ = vllm_offline(images, think=think)
    assert compare(rows, reference) <= TOLERANCE


def readout_ids(model) -> list[int]:
    """The readout tokens' ids as the transformers backend finds them in the vocabulary."""
    from transformers import AutoTokenizer

    from qponder_plugin.default_plugins.transformers_backend import readout_token_ids

    return sorted(i for ids in readout_token_ids(AutoTokenizer.from_pretrained(model)).values() for i in ids)


def test_server_matches_transformers_and_survives_kill_9(vllm_python, images, reference, tmp_path):
    with vllm_server(str(NANO), log=tmp_path / "server.log") as (base_url, server):
        with Scorer("nano", backend="openai", base_url=base_url) as scorer:
            assert scorer.backend.server_extras and scorer.backend.readout_ids == readout_ids(NANO)
            for think in (True, False):
                rows = [r.to_dict() for r in scorer.assess_batch(images, think=think)]
                assert compare(rows, reference) <= TOLERANCE
        # Killed with -9 mid-run: the first window (8 images) is scored, every later image is a backend_error, and
        # the run ends in bounded time (connection refused is retried twice with backoff, then given up).
        with Scorer("nano", backend="openai", base_url=base_url, batch_size=2, timeout=5.0,
                    max_retries=2) as scorer:
            started, results = time.monotonic(), []
            for result in scorer.iter_assess(images[:16], think=False):
                results.append(result)
                if len(results) == 8:
                    stop_hard(server)
            elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["ok"] * 8 + ["backend_error"] * 8
    assert all("connection" in r.error.lower() for r in results[8:]), results[8].error
    print(f"server killed with -9 after 8 images: 8 backend_error rows, run ended in {elapsed:.1f} s")
    assert elapsed < 60


def stop_hard(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    stop(server)


DRIVER = textwrap.dedent("""
    import json, sys
    from PIL import Image
    from qponder_plugin.backend import Request
    from qponder_plugin.scorer import Scorer

    if __name__ == "__main__":
        adapter, engine, images = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
        with Scorer(adapter, backend="vllm", profile="qponder", **engine) as scorer:
            scores = [r.score for r in scorer.assess_batch(images, think=False)]
            image = Image.new("RGB", (96, 96), (120, 80, 40))
            batch = [Request(image, "Rate this image."), Request(image, "word " * 3000), Request(image, "Rate it.")]
            refused = [repr(r) if isinstance(r, BaseException) else r[0].text
                       for r in scorer.backend.generate(batch, max_new_tokens=4)]
            [samples] = scorer.backend.generate(batch[:1], max_new_tokens=8, n=3, temperature=1.0)
        print(json.dumps({"scores": scores, "refused": refused, "samples": [c.text for c in samples]}))
""")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A peft LoRA adapter on nano's language model (random, small weights) and the same adapter merged."""
    pytest.importorskip("peft", reason="needs the train extra")
    import torch
    from peft import get_peft_model
    from qponder_plugin.training.export import export
    from qponder_plugin.training.trainers import lora_config
    from transformers import AutoModelForImageTextToText

    folder = tmp_path_factory.mktemp("lora")
    config = lora_config(r=8, alpha=16)
    config.init_lora_weights = False
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(NANO), config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.mul_(0.1)
    model.save_pretrained(folder / "adapter")
    return folder / "adapter", export(folder / "adapter", folder / "merged")


def test_offline_engine_lora_sampling_and_a_refused_request(vllm_python, images, reference, adapter):
    """One engine with a LoRA adapter (a `qponder train` output's adapter/ folder): its scores match the adapter
    merged into nano under transformers; n=3 sampling gives 3 answers; a request the engine refuses (longer than
    max_model_len) is that row's error while the rest of its batch runs."""
    adapter_dir, merged = adapter
    sample = images[:5]
    done = subprocess.run([str(vllm_python), "-c", DRIVER, str(adapter_dir), json.dumps(CPU_ENGINE), *sample],
                          capture_output=True, text=True, env=engine_env(), timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    with Scorer(merged, profile="qponder") as scorer:
        merged_scores = [r.score for r in scorer.assess_batch(sample, think=False)]
    base_scores = [reference[path, "no-think"]["score"] for path in sample]
    difference = max(abs(a - b) for a, b in zip(out["scores"], merged_scores))
    print(f"vllm + LoRA vs merged under transformers: max |score difference| {difference:.4f} "
          f"(vs the base model: {max(abs(a - b) for a, b in zip(out['scores'], base_scores)):.4f})")
    assert difference <= TOLERANCE < 10 * TOLERANCE < max(abs(a - b) for a, b in zip(out["scores"], base_scores))
    first, refused, last = out["refused"]
    assert "VLLMValidationError" in refused and "maximum context length" in refused, refused
    assert "Error" not in first + last
    assert len(out["samples"]) == 3


# The 2026 families: conftest's tiny Qwen3-VL (Thinking template) and Qwen3.5 models, offline and behind the server.
QWEN3_DRIVER = textwrap.dedent("""
    import json, sys
    from qponder_plugin.scorer import Scorer

    if __name__ == "__main__":
        model, engine, images = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
        with Scorer(model, backend="vllm", **engine) as scorer:
            for think in (True, False):
                print("\\n".join(json.dumps(r.to_dict()) for r in scorer.assess_batch(images, think=think)))
""")
GDN_BF16_ONLY = "CPU GDN attention requires BF16."
# Qwen3.5 on vLLM's CPU build runs in bfloat16 (below), so its scores are held to bfloat16's own rounding: on the tiny
# model, transformers in bfloat16 lands up to 0.005 off its float32 scores, and vLLM in bfloat16 up to 0.008.
BF16_TOLERANCE = 0.02


def engine_precision(family: str, vllm_python: Path) -> tuple[dict, float]:
    """The engine settings and the tolerance a family runs with: float32 and :data:`TOLERANCE`, except Qwen3.5
    where the engine's CPU Gated DeltaNet kernel (its linear-attention layers) asserts bfloat16."""
    if family == "qwen3.5":
        found = subprocess.run([str(vllm_python), "-c", "import importlib.util as u; "
                                "print(u.find_spec('vllm').submodule_search_locations[0])"],
                               capture_output=True, text=True)
        kernel = Path(found.stdout.strip(), "model_executor/layers/mamba/ops/cpu/gdn_attention.py")
        if kernel.is_file() and GDN_BF16_ONLY in kernel.read_text():
            print(f"{kernel} asserts {GDN_BF16_ONLY!r}: Qwen3.5 runs in bfloat16, within {BF16_TOLERANCE}")
            return {**CPU_ENGINE, "dtype": "bfloat16"}, BF16_TOLERANCE
    return CPU_ENGINE, TOLERANCE


@pytest.fixture(scope="module")
def qwen3_images(images):
    """4 of the images: a sample photo, a flat synthetic JPEG, a blurred PNG and a blurred JPEG."""
    return images[:20:5]


@pytest.fixture(scope="module")
def qwen3_reference(qwen3_model, qwen3_images):
    """The family's name, its tiny model's folder, and the transformers backend's rows, by (source, mode)."""
    family, folder = qwen3_model
    with Scorer(str(folder)) as scorer:
        rows = {(r.source, r.mode): r.to_dict() for think in (True, False)
                for r in scorer.assess_batch(qwen3_images, think=think)}
    return family, str(folder), rows


@pytest.fixture(scope="module")
def qwen3_server(qwen3_reference, vllm_python, tmp_path_factory):
    """vLLM's server on the family's tiny model, at the family's precision."""
    family, folder, _ = qwen3_reference
    engine, _ = engine_precision(family, vllm_python)
    with vllm_server(folder, engine=engine, log=tmp_path_factory.mktemp("server") / "server.log") as (base_url, _):
        yield base_url


def test_qwen3_offline_engine_matches_transformers(vllm_python, qwen3_images, qwen3_reference):
    family, folder, reference = qwen3_reference
    engine, tolerance = engine_precision(family, vllm_python)
    done = subprocess.run([str(vllm_python), "-c", QWEN3_DRIVER, folder, json.dumps(engine), *qwen3_images],
                          capture_output=True, text=True, env=engine_env(), timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for mode in ("think", "no-think"):
        assert compare([r for r in rows if r["mode"] == mode], reference) <= tolerance


def test_qwen3_server_renders_the_prompts_of_chat_text(qwen3_server, qwen3_reference, qwen3_images):
    """The openai backend's requests, as vLLM's server renders them (``/tokenize``, no generation), are the other
    backends' prompts token for token, with and without reasoning (Qwen3.5's template switched by
    ``enable_thinking``, Qwen3-VL's open ``<think>`` closed empty before the answer prefix)."""
    from qponder_plugin.backend import Request
    from qponder_plugin.default_plugins.profiles import QPONDER
    from qponder_plugin.default_plugins.transformers_backend import chat_text, load_processor
    from qponder_plugin.images import load_image

    _, folder, _ = qwen3_reference
    processor = load_processor(folder)
    image = load_image(qwen3_images[0])
    sent = []

    async def record(**request):
        sent.append(request)
        raise RuntimeError("recorded, not sent")

    with Scorer(folder, backend="openai", base_url=qwen3_server) as scorer:
        scorer.backend.client.chat.completions.create = record
        for think in (True, False):
            request = Request(image, QPONDER.prompt(think), prefix="" if think else QPONDER.answer_prefix)
            scorer.backend.generate([request], max_new_tokens=1)
            extra = {k: v for k, v in sent[-1]["extra_body"].items() if k != "logprob_token_ids"}
            body = json.dumps({"model": folder, "messages": sent[-1]["messages"], **extra}).encode()
            tokenize = urllib.request.Request(qwen3_server.removesuffix("/v1") + "/tokenize", body,
                                              {"Content-Type": "application/json"})
            rendered = json.loads(urllib.request.urlopen(tokenize, timeout=60).read())
            expected = processor(text=[chat_text(processor, request)], images=[image])["input_ids"][0]
            assert rendered["tokens"] == list(expected), processor.tokenizer.decode(rendered["tokens"][-12:])


def test_qwen3_server_matches_transformers(vllm_python, qwen3_server, qwen3_reference, qwen3_images):
    family, folder, reference = qwen3_reference
    _, tolerance = engine_precision(family, vllm_python)
    with Scorer(folder, backend="openai", base_url=qwen3_server) as scorer:
        for think in (True, False):
            rows = [r.to_dict() for r in scorer.assess_batch(qwen3_images, think=think)]
            assert compare(rows, reference) <= tolerance
