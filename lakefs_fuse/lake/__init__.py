"""An opened lake, without FUSE: metadata and chunk client joined (``lake``), its identity and
format, and the tools that walk it whole -- scrub/repair/rebalance/status (``repair``), the
delete-queue pass (``gc``), compaction (``compact``), a readable copy of its metadata (``view``).

Imports ``meta``, ``chunks`` and the base layer; never ``mount``, ``admin`` or ``cli``.
"""
