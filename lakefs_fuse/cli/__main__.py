"""``python -m lakefs_fuse.cli``: the same as the ``lakefs-fuse`` command."""

from .main import main

main()
