"""Lake errors as the OSErrors Python code expects (FileNotFoundError, PermissionError, ...).

Imports the errno table (``lakefs_fuse.errors``) only.
"""

from __future__ import annotations

import os

from ..errors import LakeError


def oserror(exc: LakeError, path: object = None) -> OSError:
    """The OSError of a lake error: its errno, the usual text (plus the lake's detail), the path.
    ``OSError(errno, ...)`` picks the subclass (ENOENT: FileNotFoundError, ...)."""
    code = exc.errno
    message = os.strerror(code)
    detail = str(exc)
    if detail and detail.lower() != message.lower():
        message = f"{message} ({detail})"
    if isinstance(path, str | bytes | os.PathLike):
        return OSError(code, message, os.fsdecode(path))
    return OSError(code, message)
