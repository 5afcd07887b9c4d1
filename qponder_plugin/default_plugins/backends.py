"""The built-in backends. Each engine is imported only when a scorer first uses it."""

from __future__ import annotations

from ..backend import lazy
from ..hookspecs import hookimpl

_HERE = "qponder_plugin.default_plugins"


@hookimpl
def register_backends(register):
    register("transformers", lazy(f"{_HERE}.transformers_backend:TransformersBackend",
                                  requires=("torch", "torchvision", "transformers"), extra="transformers"))
    register("vllm", lazy(f"{_HERE}.vllm_backend:VLLMBackend", requires=("vllm", "transformers"), extra="vllm"))
    register("openai", lazy(f"{_HERE}.openai_backend:OpenAIBackend", requires=("openai",), extra="openai"))
