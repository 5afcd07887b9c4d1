"""The `qponder` command line on the trained tiny model: formats, exit codes, errors."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from smoke import solid_image

from qponder_plugin import __version__
from qponder_plugin.cli import build


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    solid_image(0.1, 80, seed=1).save(folder / "dark.png")
    solid_image(0.9, 80, seed=2).save(folder / "bright.jpg")
    return folder


def invoke(*args, env=None):
    return CliRunner().invoke(build(), [str(a) for a in args], env=env, catch_exceptions=False)


def test_version_models_and_plugins():
    assert invoke("--version").output.strip() == f"qponder, version {__version__}"
    models = json.loads(invoke("models", "--json").stdout)
    assert {"alias": "q-insight", "model_id": "ByteDance/Q-Insight", "profile": "q-insight"} in models["models"]
    plugins = {p["name"]: p for p in json.loads(invoke("plugins", "--json").stdout)}
    assert plugins["qponder_plugin.default_plugins.commands"]["hooks"] == ["register_commands"]
    assert all(p["status"] == "loaded" for name, p in plugins.items() if name.startswith("qponder_plugin."))


def test_backends_say_what_they_need(tmp_path):
    import importlib.util

    backends = {b["name"]: b for b in json.loads(invoke("models", "--json").stdout)["backends"]}
    assert set(backends) >= {"transformers", "vllm", "openai"}
    assert backends["vllm"]["requires"] == ["vllm", "transformers"]
    assert backends["vllm"]["install"] == "pip install 'qponder-plugin[vllm]'"
    assert "Backends (--backend):" in invoke("plugins").stdout
    if importlib.util.find_spec("vllm") is None:  # the project's own venv: vLLM lives in an engine venv of its own
        assert backends["vllm"]["missing"] == ["vllm"]
        solid_image(0.5, 32).save(tmp_path / "a.png")
        result = invoke("assess", tmp_path / "a.png", "--backend", "vllm")
        assert result.exit_code == 2 and "vllm not installed: pip install 'qponder-plugin[vllm]'" in result.output


@pytest.mark.model
def test_assess_json_lines_and_exit_codes(smoke_model, images, tmp_path):
    result = invoke("assess", "-m", smoke_model, images, "--json")
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(r["source"]).name: r for r in rows}
    assert set(by_name) == {"dark.png", "bright.jpg"}
    assert by_name["bright.jpg"]["score"] > by_name["dark.png"]["score"]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    partial = invoke("assess", "-m", smoke_model, images / "dark.png", tmp_path / "broken.png", "--json")
    assert partial.exit_code == 1
    statuses = [json.loads(line)["status"] for line in partial.stdout.splitlines()]
    assert statuses == ["ok", "image_error"]


@pytest.mark.model
def test_assess_csv_table_and_no_think(smoke_model, images):
    result = invoke("assess", "-m", smoke_model, images, "--csv", "--no-think")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert result.exit_code == 0 and len(rows) == 2
    assert {r["mode"] for r in rows} == {"no-think"} and all(1 <= float(r["score"]) <= 5 for r in rows)
    table = invoke("assess", "-m", smoke_model, images, "--table", env={"COLUMNS": "250"})  # no folded paths
    assert table.exit_code == 0
    assert "dark.png" in table.stdout and "2 images: 2 ok, 0 failed" in table.stdout


def test_usage_errors_exit_2(images, tmp_path, monkeypatch):
    monkeypatch.setattr("qponder_plugin.spec.NANO", tmp_path / "no-bundled-model")
    no_model = invoke("assess", images, env={"QPONDER_MODEL": ""})
    assert no_model.exit_code == 2 and "QPONDER_MODEL" in no_model.output
    assert invoke("assess").exit_code == 2
    (tmp_path / "empty").mkdir()
    empty = invoke("assess", "-m", "x", tmp_path / "empty")
    assert empty.exit_code == 2 and "no image files" in empty.output
    unknown = invoke("assess", "-m", tmp_path, "--profile", "nope", images)
    assert unknown.exit_code == 2 and "unknown profile" in unknown.output


@pytest.mark.model
def test_installed_console_script(smoke_model, images):
    script = Path(sys.executable).with_name("qponder")
    env = {**os.environ, "QPONDER_MODEL": str(smoke_model)}
    done = subprocess.run([script, "assess", images / "bright.jpg", "--json", "--no-think"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok"


@pytest.mark.parametrize("load", ["qponder_plugin.hookimpl", "__import__('qponder_plugin.cli').cli.build()"])
def test_import_and_cli_start_stay_light(load):
    heavy = ("torch", "transformers", "vllm", "ray", "trl", "peft", "datasets", "matplotlib", "scipy")
    code = f"import sys, qponder_plugin; {load}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
