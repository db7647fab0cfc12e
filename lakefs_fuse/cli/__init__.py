"""The command line: click only -- parse, build a config, call one function of the layers below, print.

Every user mistake is one line on stderr and exit status 1 (:class:`~lakefs_fuse.errors.UserError`).
"""

from .main import main

__all__ = ["main"]
