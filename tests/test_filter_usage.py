"""`qponder filter`'s usage errors (exit status 2), caught before any model is loaded."""

import pytest
from click.testing import CliRunner
from smoke import solid_image

from qponder_plugin.cli import build


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    solid_image(0.5, 32).save(root / "a.png")
    return root


def test_filter_usage_errors_exit_2(tree, tmp_path):
    def invoke(*args):
        return CliRunner().invoke(build(), ["filter", *map(str, args)], catch_exceptions=False)

    assert invoke(tree).exit_code == 2  # no threshold
    assert invoke().exit_code == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = invoke(tree, "--threshold", 3, "--keep", blocker / "keep", "--store", tmp_path / "s.sqlite")
    assert unwritable.exit_code == 2 and "cannot write" in unwritable.output
    assert not (tmp_path / "s.sqlite").exists()
    assert invoke(tree, "--threshold", 3, "--backend", "nope").exit_code == 2
    assert invoke(tree, "--threshold", 7).exit_code == 2
    assert invoke("--export", tmp_path / "m.txt", "--store", tmp_path / "s.sqlite").exit_code == 2
