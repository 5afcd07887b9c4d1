"""``python -m qponder_plugin``: the ``qponder`` command line."""

from .cli import main

main()
