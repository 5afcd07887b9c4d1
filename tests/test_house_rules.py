"""The rules of the house that tools check: ruff's lint, and import-linter's contracts on the installed layout
(one-way imports, no import circles; function-level and TYPE_CHECKING imports count)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each folder lands when the distribution is installed ([tool.setuptools.package-dir] in pyproject.toml).
INSTALLED = {"qponder_plugin": "qponder_plugin", "training": "qponder_plugin/training",
             "comfyui_nodes": "qponder_plugin/comfyui"}


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        pytest.skip(f"{name} is not installed (the dev extra installs it)")
    return str(path)


def test_ruff_lint_passes():
    done = subprocess.run([tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed_layout(tmp_path_factory) -> Path:
    """The three source folders copied into the layout they are installed in: import-linter reads a package from
    one folder, and the wings live in folders of their own."""
    site = tmp_path_factory.mktemp("site")
    for folder, target in INSTALLED.items():
        shutil.copytree(ROOT / folder, site / target, ignore=shutil.ignore_patterns("__pycache__", "nano"))
    shutil.copy(ROOT / "pyproject.toml", site)
    return site


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("lint-imports"), "--no-cache"], cwd=site, capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": ""})


def test_import_contracts_hold(installed_layout):
    done = lint_imports(installed_layout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("scoring.py", "from .training import rewards", "Only a wing imports itself"),
    ("training/cli.py", "from qponder_plugin.comfyui import nodes", "Wings never import each other"),
    ("backend.py", "from .scorer import Scorer", "No import circles"),
])
def test_import_contracts_catch_a_violation(installed_layout, tmp_path, module, line, contract):
    site = tmp_path / "site"
    shutil.copytree(installed_layout, site)
    (site / "qponder_plugin/comfyui/nodes.py").write_text('"""A stand-in module."""\n')
    target = site / "qponder_plugin" / module
    target.write_text(target.read_text() + f"\n\ndef _late():\n    {line}\n")  # a function-level import counts
    done = lint_imports(site)
    assert done.returncode == 1 and f"{contract}" in done.stdout and "BROKEN" in done.stdout, done.stdout
