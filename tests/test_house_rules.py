"""The rules of the house that tools check: ruff's lint, import-linter's contracts on the installed layout
(one-way imports, no import circles; function-level and TYPE_CHECKING imports count), and the documentation's
shape (a README a newcomer can read through, and no relative link that leads nowhere)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each folder lands when the distribution is installed ([tool.setuptools.package-dir] in pyproject.toml).
INSTALLED = {"qponder_plugin": "qponder_plugin", "training": "qponder_plugin/training",
             "comfyui_nodes": "qponder_plugin/comfyui"}
README_MAX_LINES = 200
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$|`[^`\n]*`", re.M | re.S)  # fenced blocks and inline code
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)",
                  re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


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


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move "
                                            "details into a page under docs/ and link to it")


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page (inline and reference links, images included), without their
    anchors; links inside code are not links."""
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    targets = (inline or reference for inline, reference in LINK.findall(text))
    return [target.partition("#")[0] for target in targets if not SCHEME.match(target) and target.partition("#")[0]]


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    broken = [target for target in relative_links(page) if not (page.parent / target).is_file()]
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_the_link_check_sees_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](a.md#part), ![b](img/b.png \"B\"), [web](https://example.org), [top](#top),\n"
                    "`[not](code.md)`, and [c][ref].\n\n```\n[nor](fenced.md)\n```\n\n[ref]: docs/c.md\n")
    assert relative_links(page) == ["a.md", "img/b.png", "docs/c.md"]
