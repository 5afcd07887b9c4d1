"""``python -m qponder_plugin``: the ``qponder`` command line."""

from .cli import main

if __name__ == "__main__":  # engines that start worker processes (vLLM) re-import the main module
    main()
