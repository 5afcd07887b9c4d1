"""The example third-party plugin (examples/qponder-example-plugin), installed for real and used in fresh processes.

Plugins are discovered from entry points once per process, so every check runs in a subprocess whose PYTHONPATH
holds throwaway ``pip install --target`` directories: the example, and two deliberately broken plugins built here.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "qponder-example-plugin"
EXAMPLE_HOOKS = ["on_assessed", "register_image_loaders", "register_profiles"]
BUILTIN_PROFILES = {"qponder", "visualquality-r1", "q-insight", "qwen2.5-vl-instruct", "mr-iqa", "iqa-t1", "mr-iqa-2",
                    "q-realign", "zoom-iqa", "evoquality"}


def pip_install(project: Path, target: Path) -> Path:
    """Build and install ``project`` into ``target`` offline, with the venv's own setuptools."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--quiet", "--target", str(target), str(project)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return target


def make_plugin(root: Path, dist: str, module: str, source: str) -> Path:
    """A one-module plugin distribution whose entry point is named after the module."""
    project = root / dist
    project.mkdir()
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1.0"

        [project.entry-points.qponder_plugin]
        {module} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (project / f"{module}.py").write_text(textwrap.dedent(source))
    return project


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("example")
    # pip builds in the source tree; build a copy so examples/ stays free of build/ and *.egg-info.
    project = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    return pip_install(project, root / "site")


@pytest.fixture(scope="session")
def broken_import_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken-import")
    project = make_plugin(root, "qponder-broken-import", "broken_import", """\
        raise ImportError("needs a library that is not installed")
        """)
    return pip_install(project, root / "site")


@pytest.fixture(scope="session")
def broken_hook_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken-hook")
    project = make_plugin(root, "qponder-broken-hook", "broken_hook", """\
        import pluggy

        hookimpl = pluggy.HookimplMarker("qponder_plugin")


        @hookimpl
        def register_profiles(register):
            raise RuntimeError("bug in the plugin")
        """)
    return pip_install(project, root / "site")


def run(args: list[str], sites: list[Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if key not in {"QPONDER_DISABLE_PLUGINS", "QPONDER_EXAMPLE_LOG"}}
    environment.update(PYTHONPATH=os.pathsep.join(map(str, sites)), **(env or {}))
    return subprocess.run([sys.executable, *args], env=environment, capture_output=True, text=True, timeout=120)


def qponder(*args: str, sites: list[Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run(["-m", "qponder_plugin", *args], sites, env)


def python_json(code: str, sites: list[Path], env: dict[str, str] | None = None):
    """Run ``code`` in a fresh interpreter and return what it printed, parsed as JSON."""
    result = run(["-c", textwrap.dedent(code)], sites, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def plugins_by_name(sites: list[Path], env: dict[str, str] | None = None) -> dict[str, dict]:
    result = qponder("plugins", "--json", sites=sites, env=env)
    assert result.returncode == 0, result.stderr
    return {info["name"]: info for info in json.loads(result.stdout)}


def test_plugins_command_lists_the_example_and_its_hooks(example_site):
    example = plugins_by_name([example_site])["example"]
    assert example == {"name": "example", "origin": "qponder-example-plugin 0.1.0", "status": "loaded",
                       "error": None, "hooks": EXAMPLE_HOOKS, "unknown_hooks": []}


def test_likert_10_profile_maps_0_to_10_onto_1_to_5(example_site):
    found = python_json("""
        import json
        from qponder_plugin.registry import get_profile, get_profiles

        profile = get_profile("likert-10")
        print(json.dumps({
            "profiles": sorted(get_profiles()),
            "score_range": profile.score_range,
            "to_scale": {value: profile.to_scale(value) for value in (0, 5, 10, 12, -1)},
            "parsed": profile.parse("<think>Slight blur.</think><answer>7/10</answer>").value,
            "prompts": [profile.prompt(think=True), profile.prompt(think=False)],
        }))
        """, [example_site])
    assert set(found["profiles"]) == BUILTIN_PROFILES | {"likert-10"}
    assert found["score_range"] == [0, 10]
    assert found["to_scale"] == {"0": [1.0, False], "5": [3.0, False], "10": [5.0, False],
                                 "12": [5.0, True], "-1": [1.0, True]}
    assert found["parsed"] == 7.0
    think, nothink = found["prompts"]
    assert "<think>" in think and "<think>" not in nothink
    assert all("0 to 10" in prompt and "<answer> </answer>" in prompt for prompt in (think, nothink))


def test_npy_files_load_through_the_core_pipeline(example_site, tmp_path):
    hwc = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    chw = np.linspace(0.0, 1.0, 3 * 30 * 50).reshape(3, 30, 50)
    np.save(tmp_path / "hwc.npy", hwc)
    with open(tmp_path / "chw.NPY", "wb") as handle:  # np.save would append ".npy" to this name
        np.save(handle, chw)
    (tmp_path / "corrupt.npy").write_bytes(b"not an array")
    found = python_json(f"""
        import json
        from pathlib import Path
        import numpy as np
        from qponder_plugin.images import ImageError, load_image

        folder = Path({str(tmp_path)!r})
        images = {{"hwc": load_image(str(folder / "hwc.npy")), "chw": load_image(folder / "chw.NPY")}}
        try:
            load_image(folder / "corrupt.npy")
            error = None
        except ImageError as exc:
            error = str(exc)
        print(json.dumps({{"images": {{name: {{"mode": image.mode, "size": image.size,
                                              "pixels": np.asarray(image).tolist()}}
                                       for name, image in images.items()}},
                          "corrupt": error}}))
        """, [example_site])
    loaded_hwc, loaded_chw = found["images"]["hwc"], found["images"]["chw"]
    assert (loaded_hwc["mode"], loaded_hwc["size"]) == ("RGB", [60, 40])
    assert np.array_equal(loaded_hwc["pixels"], hwc)
    assert (loaded_chw["mode"], loaded_chw["size"]) == ("RGB", [50, 30])
    assert np.array_equal(loaded_chw["pixels"], np.rint(np.moveaxis(chw, 0, -1) * 255))
    assert "corrupt.npy: not a readable .npy array" in found["corrupt"]


def test_scoring_an_npy_with_likert_10_logs_the_assessment(example_site, tmp_path):
    """End to end: the .npy loader, the likert-10 prompt and mapping, and on_assessed, around a canned backend."""
    np.save(tmp_path / "photo.npy", np.full((32, 32, 3), 128, dtype=np.uint8))
    log = tmp_path / "assessments.jsonl"
    found = python_json(f"""
        import json
        import sys
        from qponder_plugin import hookimpl, load_scorer
        from qponder_plugin.backend import Backend, Completion
        from qponder_plugin.plugins import get_plugins

        prompts = []


        class Canned(Backend):
            def generate(self, requests, *, max_new_tokens, n=1, temperature=1.0):
                prompts.extend(request.prompt for request in requests)
                return [[Completion("<think>Flat grey, but clean.</think><answer>7</answer>", [], "stop")]
                        for _ in requests]


        @hookimpl
        def register_backends(register):
            register("canned", lambda model, **options: Canned())


        get_plugins().manager.register(sys.modules[__name__], name="canned-backend")
        with load_scorer("any-instruct-vlm", backend="canned", profile="likert-10") as scorer:
            assessment = scorer.assess({str(tmp_path / "photo.npy")!r})
        print(json.dumps({{"assessment": assessment.to_dict(), "prompts": prompts}}))
        """, [example_site], env={"QPONDER_EXAMPLE_LOG": str(log)})
    assessment = found["assessment"]
    assert (assessment["status"], assessment["score"], assessment["normalized"]) == ("ok", 3.8, 0.7)
    assert (assessment["profile"], assessment["method"], assessment["clamped"]) == ("likert-10", "text", False)
    assert "0 to 10" in found["prompts"][0]
    assert [json.loads(line) for line in log.read_text().splitlines()] == [assessment]


@pytest.mark.parametrize("disable", ["1", "example"])
def test_disabled_example_contributes_nothing(example_site, tmp_path, disable):
    np.save(tmp_path / "photo.npy", np.zeros((8, 8, 3), dtype=np.uint8))
    env = {"QPONDER_DISABLE_PLUGINS": disable}
    assert plugins_by_name([example_site], env)["example"]["status"] == "disabled"
    found = python_json(f"""
        import json
        from qponder_plugin.images import ImageError, load_image
        from qponder_plugin.registry import get_profiles

        try:
            load_image({str(tmp_path / "photo.npy")!r})
            error = None
        except ImageError as exc:
            error = str(exc)
        print(json.dumps({{"profiles": sorted(get_profiles()), "npy_error": error}}))
        """, [example_site], env)
    assert set(found["profiles"]) == BUILTIN_PROFILES
    assert "not an image" in found["npy_error"]


def test_plugin_that_fails_to_import_is_reported_and_the_core_works(example_site, broken_import_site):
    sites = [broken_import_site, example_site]
    plugins = plugins_by_name(sites)
    assert plugins["broken_import"]["status"] == "error"
    assert "ImportError: needs a library that is not installed" in plugins["broken_import"]["error"]
    assert plugins["example"]["status"] == "loaded"
    models = qponder("models", "--json", sites=sites)
    assert models.returncode == 0, models.stderr
    assert {"qponder", "likert-10"} <= {profile["name"] for profile in json.loads(models.stdout)["profiles"]}
    assert "PluginWarning" in models.stderr


def test_plugin_whose_hook_raises_is_reported_and_the_core_works(example_site, broken_hook_site):
    sites = [broken_hook_site, example_site]
    found = python_json("""
        import json
        import warnings
        from qponder_plugin.plugins import get_plugins
        from qponder_plugin.registry import get_profiles

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            profiles = sorted(get_profiles())
        print(json.dumps({"profiles": profiles, "broken": vars(get_plugins().info["broken_hook"]),
                          "warnings": [str(warning.message) for warning in caught]}))
        """, sites)
    assert set(found["profiles"]) == BUILTIN_PROFILES | {"likert-10"}
    assert found["broken"]["status"] == "error"
    assert found["broken"]["error"] == "hook register_profiles raised RuntimeError: bug in the plugin"
    assert found["warnings"] == ["qponder plugin 'broken_hook': hook register_profiles raised RuntimeError: "
                                 "bug in the plugin"]
    models = qponder("models", "--json", sites=sites)
    assert models.returncode == 0, models.stderr
    assert "qponder" in {profile["name"] for profile in json.loads(models.stdout)["profiles"]}


def test_plugins_command_reports_a_plugin_whose_hook_raises(broken_hook_site):
    assert plugins_by_name([broken_hook_site])["broken_hook"]["status"] == "error"
