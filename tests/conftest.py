import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The nano recipe's own modules (the smoke and nano model builders, the vision transplant and fine-tune) are plain
# modules in examples/nano, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nano"))

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.pop("QPONDER_MODEL", None)
# Parallel workers share the cores: one torch thread each (more would only wait on each other).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") != "1":
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# Built test models are cached here between sessions, keyed by everything that shapes them (a new clone reuses them).
MODEL_CACHE = Path(os.environ.get("QPONDER_TEST_CACHE") or Path.home() / ".cache" / "qponder-plugin" / "test-models")
MODEL_SOURCES = ("examples/nano/builders.py", "examples/nano/smoke.py", "qponder_plugin/default_plugins/profiles.py",
                 "qponder_plugin/default_plugins/transformers_backend.py")

# The MOS data the data tests read: $QPONDER_TEST_DATA, else the shared data folder beside the checkout.
DATA = Path(os.environ.get("QPONDER_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_labels(folder: str, what: str) -> Path:
    """``DATA/folder/labels.csv``; the test skips, naming ``what``, when it is not here."""
    labels = DATA / folder / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"{what} not present at {labels} (set QPONDER_TEST_DATA to the data folder)")
    return labels


@pytest.fixture(scope="session")
def agiqa_labels() -> Path:
    """AGIQA-3K's labels.csv (with a train/val split column); the test skips when the data is not here."""
    return shared_labels("agiqa-3k", "AGIQA-3K labels")


@pytest.fixture(scope="session")
def biq2021_sample() -> Path:
    """The BIQ2021 sample's labels.csv (200 train, 100 test photos; images in images/); skips when absent."""
    return shared_labels("biq2021-sample", "the BIQ2021 sample")


def cached_model(tmp_path_factory, name: str, build) -> Path:
    """A copy (the test's own) of the model ``build(path)`` writes, built once and cached in :data:`MODEL_CACHE`
    under a key of the builders' sources and the torch and transformers versions; a lock keeps parallel test
    workers from building it twice."""
    from filelock import FileLock

    key = hashlib.sha256(name.encode())
    for source in MODEL_SOURCES:
        key.update((ROOT / source).read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        key.update(importlib.metadata.version(package).encode())
    cached = MODEL_CACHE / f"{name}-{key.hexdigest()[:16]}"
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cached}.lock"):
        if not cached.is_dir():
            part = cached.with_name(f".{cached.name}.part")
            shutil.rmtree(part, ignore_errors=True)
            build(part)
            part.rename(cached)
    return Path(shutil.copytree(cached, tmp_path_factory.mktemp("models") / name))


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory):
    """The trained tiny Qwen2.5-VL (scores brightness), built offline (once, then cached between sessions)."""
    pytest.importorskip("transformers", reason="needs the transformers extra")
    from smoke import build_tiny_model

    return cached_model(tmp_path_factory, "qponder-smoke", build_tiny_model)


@pytest.fixture(scope="session", params=["qwen3-vl", "qwen3.5"])
def qwen3_model(request, tmp_path_factory):
    """``(family, folder)``: a tiny Qwen3-VL (Thinking-style template) or Qwen3.5 model, trained briefly (40 steps) so
    that its answers parse in both modes; built once, then cached between sessions."""
    pytest.importorskip("transformers", reason="needs the transformers extra")
    pytest.importorskip("trl", reason="the Qwen3.5 chat template comes from trl")
    from smoke import build_tiny_model

    family = request.param
    return family, cached_model(tmp_path_factory, f"qponder-smoke-{family}",
                                lambda path: build_tiny_model(path, family=family, steps=40))


@pytest.fixture(scope="session")
def scorer(smoke_model):
    from qponder_plugin import load_scorer

    with load_scorer(smoke_model, batch_size=4) as scorer:
        yield scorer


@pytest.fixture
def serve():
    """``serve(folder)`` serves a folder over HTTP on 127.0.0.1 (Python's own server, in a process of its own, so
    that a test blocked in a call cannot stall it) and returns its base URL."""
    servers = []

    def start(folder) -> str:
        server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                                   "--directory", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True)
        servers.append(server)
        port = re.search(r"port (\d+)", server.stdout.readline()).group(1)  # "Serving HTTP on 127.0.0.1 port N"
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.kill()
        server.wait()
