"""The live registries of backends, profiles and image loaders.

Each lookup collects the registering hooks afresh (as simonw/llm does), so a plugin registered at run time, after a
first ``assess()``, is seen by the next lookup. Collecting is a handful of function calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .backend import Backend, BackendError
from .plugins import collect, gather
from .profile import Profile

FALLBACK_PROFILE = "qwen2.5-vl-instruct"  # zero-shot prompting: the profile for a checkpoint nothing matches


def get_backends() -> Mapping[str, Callable[..., Backend]]:
    """Every registered backend factory by name."""
    return gather("register_backends")


def create_backend(name: str, model: str, **options) -> Backend:
    backends = get_backends()
    if name not in backends:
        raise BackendError(f"unknown backend {name!r}; installed: {', '.join(sorted(backends))}")
    return backends[name](model, **options)


def get_profiles() -> Mapping[str, Profile]:
    """Every registered profile by name (built-ins first; a plugin may not silently replace one)."""
    return gather("register_profiles", key=lambda profile: profile.name)


def get_profile(name: str) -> Profile:
    profiles = get_profiles()
    if name not in profiles:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}")
    return profiles[name]


def profile_for_model(model_id: str) -> Profile:
    """The profile whose ``match`` fits ``model_id`` best (longest match), else the zero-shot fallback."""
    lowered = model_id.lower()
    profiles = get_profiles()
    best = max(((len(m), p) for p in profiles.values() for m in p.match if m in lowered),
               key=lambda pair: pair[0], default=None)
    return best[1] if best else profiles[FALLBACK_PROFILE]


def get_image_loaders() -> tuple[Callable, ...]:
    """Every registered image loader, in pluggy's call order (the last registered first; tryfirst/trylast honoured)."""
    loaders: list[Callable] = []
    collect("register_image_loaders", register=loaders.append)
    return tuple(loaders)
