"""An opened lake, without FUSE: metadata and chunk client joined (``lake``), made (``format``),
recognised (``identity``: copies, moves and storage that belongs to another lake); the tools that
walk it whole -- scrub/repair/rebalance/status (``repair``), the delete-queue pass (``gc``),
compaction (``compact``), a readable copy of its metadata (``view``); and the one conversion
between chunk records and layouts (``records``).

Imports ``meta``, ``chunks`` and the base layer; never ``mount``, ``admin`` or ``cli``.
"""
