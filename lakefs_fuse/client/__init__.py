"""The in-process Python client: a lake without FUSE (``lakefs_fuse.connect``).

* :mod:`.lake` -- :func:`connect` and :class:`LakeClient`: os-like calls, file objects, fork safety;
* :mod:`.files` -- the file objects (:class:`RawLakeFile` under io's buffering);
* :mod:`.session` -- paths, permissions and error order over the mount's VFS (trio side);
* :mod:`.portal` -- the trio thread calls are handed to;
* :mod:`.fsspec` -- the ``lakefs://`` fsspec filesystem;
* :mod:`.dataset` -- ``LakeImageFolder`` and the planning DataLoader (``lakefs_fuse.torch``; imports torch);
* :mod:`.errmap` -- lake errors as OSErrors.

This layer sits beside ``admin``: it imports ``mount`` (the VFS, never pyfuse3), ``lake`` and the
base; nothing below imports it.
"""

from .lake import LakeClient, connect

__all__ = ["LakeClient", "connect"]
