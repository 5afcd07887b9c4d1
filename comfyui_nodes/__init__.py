"""ComfyUI node pack for qponder-plugin (``qponder_plugin.comfyui``): thin adapters over the core."""
