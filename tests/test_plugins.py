"""The plugin manager and the live registries, in-process: plugins registered at run time, misspelt hooks,
the training wing's hook specifications, pluggy's ordering marks and wrappers, and broken implementations and
wrappers kept away from the core."""

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest
from click.testing import CliRunner

from qponder_plugin import hookimpl, register_plugin, unregister_plugin
from qponder_plugin.backend import Backend
from qponder_plugin.cli import build
from qponder_plugin.default_plugins.profiles import QPONDER
from qponder_plugin.plugins import PluginWarning, collect, get_plugins, notify_assessed
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

    name = register_plugin(Impostor(), "impostor")  # pluggy calls it before the built-ins (the latest first)
    try:
        with pytest.warns(PluginWarning, match="'qponder' is already registered by qponder_plugin.default_plugins"):
            assert get_profile("qponder") is QPONDER
        assert get_plugins().info[name].status == "error"
        assert get_plugins().info["qponder_plugin.default_plugins.profiles"].status == "loaded"
    finally:
        unregister_plugin(name)


def observer(label, **marks):
    """A plugin whose ``on_assessed`` notes ``label`` in the assessment (a list here) and returns it."""

    class Observer:
        @hookimpl(**marks)
        def on_assessed(self, assessment):
            assessment.append(label)
            return label

    return Observer()


@contextmanager
def registered(**plugins):
    """Register ``plugins`` at run time by name, in order, and unregister them afterwards."""
    names = []
    try:
        for name, plugin in plugins.items():
            names.append(register_plugin(plugin, name))
        yield
    finally:
        for name in names:
            unregister_plugin(name)


def test_tryfirst_and_trylast_order_the_calls_as_pluggy_documents():
    seen = []
    with registered(first=observer("first", tryfirst=True), a=observer("a"), last=observer("last", trylast=True),
                    b=observer("b")):
        notify_assessed(seen)
    assert seen == ["first", "b", "a", "last"]  # marks first, then the latest registered first (pluggy's LIFO)


def test_new_and_old_style_wrappers_wrap_the_call():
    class NewStyle:
        @hookimpl(wrapper=True)
        def register_profiles(self, register):
            register("new: before")
            result = yield
            register("new: after")
            return [*result, "new"]

    class OldStyle:
        @hookimpl(hookwrapper=True)
        def register_profiles(self, register):
            register("old: before")
            outcome = yield
            register("old: after")
            outcome.force_result([*outcome.get_result(), "old"])

    seen = []
    with registered(new=NewStyle(), old=OldStyle()):
        result = collect("register_profiles", register=seen.append)
    assert seen[:2] == ["old: before", "new: before"]  # the later wrapper is the outer one
    assert QPONDER in seen[2:-2]  # the built-ins register in between
    assert seen[-2:] == ["new: after", "old: after"]
    assert result == ["new", "old"]


def test_an_exception_after_a_wrappers_yield_reaches_the_outer_wrapper():
    class Outer:
        @hookimpl(wrapper=True)
        def on_assessed(self, assessment):
            try:
                return (yield)
            except ValueError as exc:
                return [f"outer caught {exc}"]

    class Inner:
        @hookimpl(wrapper=True)
        def on_assessed(self, assessment):
            yield
            raise ValueError("inner teardown")

    with registered(inner=Inner(), outer=Outer(), plain=observer("plain")):
        assert collect("on_assessed", assessment=[]) == ["outer caught inner teardown"]


def test_a_raising_implementation_is_reported_and_the_others_still_run():
    class Broken:
        @hookimpl(tryfirst=True)
        def on_assessed(self, assessment):
            raise RuntimeError("observer bug")

    seen = []
    with registered(first=observer("first", tryfirst=True), plain=observer("plain"), broken=Broken()):
        with pytest.warns(PluginWarning, match="observer bug"):
            notify_assessed(seen)
        info = get_plugins().info
        assert (info["broken"].status, info["broken"].error) == ("error", "hook on_assessed raised RuntimeError: "
                                                                          "observer bug")
        assert info["first"].status == info["plain"].status == "loaded"
    assert seen == ["first", "plain"]  # broken was called first (a later tryfirst), and the others still ran


def test_a_wrapper_raising_before_its_yield_is_reported_and_stands_aside():
    class BrokenNewStyle:
        @hookimpl(wrapper=True)
        def on_assessed(self, assessment):
            raise RuntimeError("new-style bug")
            yield

    class BrokenOldStyle:
        @hookimpl(hookwrapper=True)
        def on_assessed(self, assessment):
            raise RuntimeError("old-style bug")
            yield

    with registered(plain=observer("plain"), new=BrokenNewStyle(), old=BrokenOldStyle()):
        with pytest.warns(PluginWarning) as caught:
            assert collect("on_assessed", assessment=[]) == ["plain"]
        assert {str(w.message) for w in caught} == {
            "qponder plugin 'new': hook on_assessed raised RuntimeError: new-style bug",
            "qponder plugin 'old': hook on_assessed raised RuntimeError: old-style bug"}
        assert get_plugins().info["new"].status == get_plugins().info["old"].status == "error"
