"""Operator tools over an opened lake: fsck (``check``), dump/load (``backup``), import and
restripe (``importer``), file and cluster inspection (``inspect``).

May import ``mount`` (import writes through the VFS), ``lake`` and below; never ``cli``.
"""
