"""Every benchmark result names the weights it measured, and every result the README cites measured the shipped ones.

Each ``benchmarks/results/*.txt`` carries a ``# weights: <folder or id> sha256:<hex>`` line
(``benchmarks/provenance.py`` writes it). The README's links to ``benchmarks/results/...txt`` must lead to files
that state the sha256 of the bundled ``qponder_plugin/nano/model.safetensors``, computed here, so that new weights
without new measurements fail.
A link to the results folder is reported too: it cannot say which files its sentence quotes.
"""

from __future__ import annotations

import hashlib
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = ROOT / "qponder_plugin" / "nano" / "model.safetensors"
BUNDLED = "qponder_plugin/nano"

WEIGHTS = re.compile(r"^# weights: (.+)$", re.M)
DIGEST = re.compile(r"\bsha256:([0-9a-f]{64})\b")
WELL_FORMED = re.compile(r"^(none \(no model\)|.+ sha256:([0-9a-f]{64}|unknown)\b.*)$")
LINK = re.compile(r"\[[^\]]*\]\((?:\./)?(benchmarks/results(?:/[^)\s#]*)?)(?:#[^)]*)?\)")


@cache
def shipped_digest() -> str:
    digest = hashlib.sha256()
    with open(SHIPPED, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def weights_lines(text: str) -> list[str]:
    """What follows ``# weights:`` on each such line."""
    return WEIGHTS.findall(text)


def citations(readme: str) -> list[tuple[str, int, str]]:
    """``(link target, line number, the sentence up to the link)`` for each link into ``benchmarks/results``."""
    found = []
    for match in LINK.finditer(readme):
        line = readme.count("\n", 0, match.start()) + 1
        paragraph_start = readme.rfind("\n\n", 0, match.start()) + 2
        before = " ".join(re.sub(r"(?m)^>\s?", "", readme[paragraph_start:match.start()]).split())  # no quote marks
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", before)[-1]
        if len(sentence) > 160:
            sentence = "…" + sentence[-159:].split(" ", 1)[-1]
        found.append((match.group(1), line, sentence))
    return found


def provenance_problems(readme: Path, shipped: str) -> list[str]:
    """What is wrong with the results ``readme`` cites (paths relative to its folder): a folder link, a missing
    file, no ``# weights:`` line, or weights other than ``shipped`` (a sha256)."""
    problems = []
    for target, line, sentence in citations(readme.read_text()):
        where = f"{readme.name}:{line} ({sentence!r})"
        path = readme.parent / target
        if target.rstrip("/") == "benchmarks/results" or path.is_dir():
            problems.append(f"{where} links the folder {target}: link the results files that sentence quotes")
            continue
        if not target.endswith(".txt"):
            continue
        if not path.is_file():
            problems.append(f"{where} links {target}, which does not exist")
            continue
        stated = weights_lines(path.read_text())
        digests = {digest for entry in stated for digest in DIGEST.findall(entry)}
        if not stated:
            problems.append(f"{where} cites {target}, which states no '# weights:' line")
        elif shipped not in digests:
            problems.append(f"{where} cites {target}, which measured other weights than the shipped "
                            f"sha256:{shipped}: {' | '.join(stated)}")
        else:
            other = [entry for entry in stated if entry.startswith(BUNDLED) and shipped not in entry]
            if other:
                problems.append(f"{where} cites {target}, which also states other bundled weights: {' | '.join(other)}")
    return problems


def test_every_result_states_its_weights():
    files = sorted(RESULTS.glob("*.txt"))
    assert files
    missing = [f.name for f in files if not weights_lines(f.read_text())]
    assert not missing, f"no '# weights:' line in {missing}"
    malformed = [(f.name, entry) for f in files for entry in weights_lines(f.read_text())
                 if not WELL_FORMED.match(entry)]
    assert not malformed, malformed


def test_readme_cites_results_of_the_shipped_weights():
    assert citations((ROOT / "README.md").read_text()), "the README cites no benchmark results"
    problems = provenance_problems(ROOT / "README.md", shipped_digest())
    assert not problems, "\n".join(problems)


def test_a_cited_result_of_other_weights_is_reported(tmp_path):
    shipped, other = shipped_digest(), hashlib.sha256(b"earlier weights").hexdigest()
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "old.txt").write_text(f"# command\n# 2026-12-03\n# weights: {BUNDLED} sha256:{other}\n1.0x\n")
    (results / "new.txt").write_text(f"# command\n# 2026-12-06\n# weights: {BUNDLED} sha256:{shipped}\n2.0x\n")
    (results / "bare.txt").write_text("# command\n# 2026-12-01, commit 012\n2.0x\n")
    readme = tmp_path / "README.md"

    readme.write_text("Fast. It is\nquick ([results](benchmarks/results/new.txt)).\n")
    assert provenance_problems(readme, shipped) == []

    readme.write_text("Fast. It is\nquick ([results](benchmarks/results/old.txt)).\n\n"
                      "See [this](benchmarks/results/new.txt).\n")
    problems = provenance_problems(readme, shipped)
    assert len(problems) == 1, problems
    assert "README.md:2" in problems[0] and "old.txt" in problems[0] and "other weights" in problems[0]
    assert f"sha256:{other}" in problems[0] and "'It is quick ('" in problems[0]

    readme.write_text("A ([a](benchmarks/results/bare.txt)), b ([b](benchmarks/results/)), "
                      "c ([c](benchmarks/results/gone.txt)).\n")
    bare, folder, gone = provenance_problems(readme, shipped)
    assert "bare.txt, which states no '# weights:' line" in bare
    assert "links the folder benchmarks/results/" in folder
    assert "gone.txt, which does not exist" in gone


def test_the_benchmark_helper_states_the_shipped_digest():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from provenance import NO_MODEL, weights_header, weights_line
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert weights_line("nano") == f"# weights: {BUNDLED} sha256:{shipped_digest()}"
    assert weights_line(ROOT / BUNDLED) == weights_line("nano")
    assert weights_header() == NO_MODEL == "# weights: none (no model)"
