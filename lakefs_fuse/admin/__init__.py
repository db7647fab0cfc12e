"""Operator tools over an opened lake, one function per CLI command: fsck (``check``), dump and
load (``backup``), import and restripe (``importer``, through a writing VFS built by ``ingest``),
file and cluster inspection (``inspect``: file info with shard health, listings, Raft rows),
peer records (``peers``), metadata members (``members``), running peer and metadata servers
(``serve``), cache warm-up (``warmup``).

May import ``mount`` (import writes through the VFS), ``lake``, ``meta``, ``chunks`` and the base
layer; never ``cli``.
"""
