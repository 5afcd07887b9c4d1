"""The plugin manager and the live registries, in-process: plugins registered at run time, misspelt hooks,
the training wing's hook specifications, and a broken plugin kept away from the core."""

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from qponder_plugin import hookimpl, register_plugin, unregister_plugin
from qponder_plugin.backend import Backend
from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.plugins import PluginWarning, get_plugins
from qponder_plugin.registry import get_backends, get_image_loaders, get_profile, get_profiles, profile_for_model


class NullBackend(Backend):
    name = "null"

    def generate(self, requests, **options):
        return [[] for _ in requests]


def no_loader(source):
    return None


class LatePlugin:
    profile = replace(QPONDER, name="late", match=("late-checkpoint",))

    @hookimpl
    def register_profiles(self, register):
        register(self.profile)

    @hookimpl
    def register_backends(self, register):
        register("null", NullBackend)

    @hookimpl
    def register_image_loaders(self, register):
        register(no_loader)


def test_a_plugin_registered_at_run_time_is_seen_by_the_next_lookup():
    assert "late" not in get_profiles() and "null" not in get_backends()  # read before the plugin arrives
    name = register_plugin(LatePlugin(), "late")
    try:
        assert get_profile("late") is LatePlugin.profile
        assert profile_for_model("org/late-checkpoint-7b").name == "late"
        assert get_backends()["null"] is NullBackend
        assert no_loader in get_image_loaders()
    finally:
        unregister_plugin(name)
    assert "late" not in get_profiles() and "null" not in get_backends() and no_loader not in get_image_loaders()


def invoke(*args):
    return CliRunner().invoke(build(), list(args), catch_exceptions=False)


def test_plugins_command_reports_a_misspelt_hook():
    class Misspelt:
        @hookimpl
        def register_profile(self, register):  # the hook is register_profiles
            register(QPONDER)

    name = register_plugin(Misspelt(), "misspelt")
    try:
        listed = {p["name"]: p for p in json.loads(invoke("plugins", "--json").stdout)}
        table = invoke("plugins").stdout
    finally:
        unregister_plugin(name)
    assert listed["misspelt"]["unknown_hooks"] == ["register_profile"]
    assert all(not p["unknown_hooks"] for n, p in listed.items() if n != "misspelt")
    assert "unknown hook 'register_profile'" in table


def test_the_training_wing_declares_its_hooks_through_a_hook():
    pytest.importorskip("yaml", reason="needs the train extra")
    from qponder_plugin.training.registry import get_rewards, get_teachers

    manager = get_plugins().manager
    assert manager.hook.register_rewards.has_spec() and manager.hook.register_teachers.has_spec()
    assert {"format", "accuracy", "consistency"} <= set(get_rewards())
    assert {"backend", "measured"} <= set(get_teachers())


def test_a_raising_hook_is_reported_and_the_registry_still_works():
    class Broken:
        @hookimpl
        def register_backends(self, register):
            raise RuntimeError("boom")

    name = register_plugin(Broken(), "broken")
    try:
        with pytest.warns(PluginWarning, match="boom"):
            backends = get_backends()
        assert "transformers" in backends
        assert get_plugins().info[name].status == "error"
    finally:
        unregister_plugin(name)


def test_a_duplicate_name_is_the_late_plugins_error_and_the_builtin_stays():
    class Impostor:
        @hookimpl
        def register_profiles(self, register):
            register(replace(QPONDER, description="impostor"))

    name = register_plugin(Impostor(), "impostor")
    try:
        with pytest.warns(PluginWarning, match="already registered"):
            assert get_profile("qponder") is QPONDER
    finally:
        unregister_plugin(name)
