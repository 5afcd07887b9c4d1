"""What the nodes use of the running ComfyUI: its progress bar, interrupts, ExecutionBlocker, folders and the
"Unload models" path. ComfyUI modules are imported on use, so importing the pack imports no ComfyUI."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable


class ComfyHost:
    """The running ComfyUI's own services (any version from early 2024 on)."""

    def progress(self, total: int) -> Callable[[], None]:
        """A step function that advances ComfyUI's progress bar for this node by one."""
        from comfy.utils import ProgressBar

        bar = ProgressBar(total)
        return lambda: bar.update(1)

    def check_interrupted(self) -> None:
        """Raise ComfyUI's interrupt exception if the user pressed Cancel."""
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()

    def interrupt(self) -> None:
        """End the running prompt as ComfyUI's Cancel does."""
        import comfy.model_management

        comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    def blocker(self):
        """An ``ExecutionBlocker(None)`` (the nodes behind it silently do not run), or None on a ComfyUI without."""
        try:
            from comfy_execution.graph_utils import ExecutionBlocker
        except ImportError:
            return None
        return ExecutionBlocker(None)

    def llm_folders(self) -> dict[str, str]:
        """Checkpoint folders under ComfyUI's ``models/LLM/`` (and extra paths for ``LLM``), by ``LLM/<name>``."""
        import folder_paths

        if "LLM" not in folder_paths.folder_names_and_paths:
            folder_paths.add_model_folder_path("LLM", os.path.join(folder_paths.models_dir, "LLM"))
        found = {}
        for root in folder_paths.get_folder_paths("LLM"):
            if os.path.isdir(root):
                for name in sorted(os.listdir(root)):
                    if os.path.isfile(os.path.join(root, name, "config.json")):
                        found.setdefault(f"LLM/{name}", os.path.join(root, name))
        return found

    def save_path(self, prefix: str, width: int, height: int) -> tuple[str, str, int, str]:
        """``(folder, file name stem, counter, subfolder)`` in ComfyUI's output folder, as its SaveImage does."""
        import folder_paths

        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(
            prefix, folder_paths.get_output_directory(), width, height)
        return folder, stem, counter, subfolder

    def metadata_enabled(self) -> bool:
        """False when ComfyUI runs with ``--disable-metadata`` (no prompt/workflow chunks then)."""
        from comfy.cli_args import args

        return not args.disable_metadata


    def on_unload(self, release: Callable[[], int]) -> None:
        """Make ComfyUI's "Unload models" (``/free``, ``comfy.model_management.unload_all_models``) call
        ``release`` too. ComfyUI has no registry for models it did not load, so this wraps that function, once."""
        import comfy.model_management

        original = comfy.model_management.unload_all_models
        if getattr(original, "qponder_release", None) is not None:
            return

        @functools.wraps(original)
        def unload_all_models(*args, **kwargs):
            freed = release()
            if freed:
                logging.getLogger(__name__).info("QPonder: freed %d model(s) (Unload models)", freed)
            return original(*args, **kwargs)

        unload_all_models.qponder_release = release
        comfy.model_management.unload_all_models = unload_all_models
