"""One errno table for the whole project.

Every domain error carries its errno. Only ``mount/operations.py`` turns them into
``pyfuse3.FUSEError``; the CLI turns :class:`UserError` into one line and a non-zero exit.
This module imports nothing from the project.
"""

from __future__ import annotations

import errno


class LakeError(Exception):
    """Base of every error the filesystem reports to a caller with an errno."""

    errno: int = errno.EIO

    def __init__(self, message: str = "", *, err: int | None = None):
        super().__init__(message)
        if err is not None:
            self.errno = err


class NotFound(LakeError):
    errno = errno.ENOENT


class Exists(LakeError):
    errno = errno.EEXIST


class NotEmpty(LakeError):
    errno = errno.ENOTEMPTY


class NotADir(LakeError):
    errno = errno.ENOTDIR


class IsADir(LakeError):
    errno = errno.EISDIR


class NameTooLong(LakeError):
    errno = errno.ENAMETOOLONG


class Invalid(LakeError):
    errno = errno.EINVAL


class TooManyLinks(LakeError):
    errno = errno.EMLINK


class NoData(LakeError):
    """Missing extended attribute."""

    errno = errno.ENODATA


class RangeError(LakeError):
    errno = errno.ERANGE


class NoSpace(LakeError):
    errno = errno.ENOSPC


class NotPermitted(LakeError):
    errno = errno.EPERM


class Busy(LakeError):
    errno = errno.EBUSY


class CrossDevice(LakeError):
    errno = errno.EXDEV


class DataUnavailable(LakeError):
    """More shards of a chunk are lost or corrupt than the code tolerates: never wrong bytes."""

    errno = errno.EIO


class MetadataCorrupt(LakeError):
    """RocksDB found a damaged block (checksum mismatch, truncated file) in the metadata.

    Nothing that reads or changes the metadata may go on from a partial view: the way out is a
    restore from a dump, or, for a metadata server, a re-seed from the other members.
    """

    errno = errno.EIO
    HINT = ("restore the lake from a dump ('lakefs-fuse load'), or re-seed a metadata server from the "
            "others ('lakefs-fuse meta rebuild'); see docs/operations.md, 'Recovering from corrupt metadata'")

    def __init__(self, where: str, detail: str):
        super().__init__(f"metadata corrupt in {where}: {detail}; {self.HINT}")


class UserError(Exception):
    """A mistake of the person at the CLI: printed as one line, exit status 1, no traceback.
    ``errno`` is what the Python client raises it as (an ``OSError``)."""

    exit_code = 1
    errno: int = errno.EINVAL


class InUse(UserError):
    """The lake is held by another process (a mount, or a client that writes)."""

    errno = errno.EBUSY


class NoSuchLake(UserError):
    """The lake's directory does not exist."""

    errno = errno.ENOENT


class TooBig(LakeError):
    errno = errno.E2BIG


_BY_ERRNO: dict[int, type[LakeError]] = {
    cls.errno: cls for cls in (NotFound, Exists, NotEmpty, NotADir, IsADir, NameTooLong, Invalid,
                               TooManyLinks, NoData, RangeError, NoSpace, NotPermitted, Busy,
                               CrossDevice, TooBig)
}


def from_errno(code: int, message: str = "") -> LakeError:
    """The LakeError for an errno that crossed the network (a remote server's answer)."""
    cls = _BY_ERRNO.get(code, LakeError)
    return cls(message) if cls is not LakeError else LakeError(message, err=code or errno.EIO)
