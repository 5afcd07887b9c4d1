"""The built-in plugins: backends, profiles and commands, registered through the same hooks as any third-party
plugin. Each module here is one plugin; the plugin manager registers them by name."""
