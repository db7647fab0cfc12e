"""lakefs-fuse: a POSIX filesystem over erasure-coded chunks, built for training reads.

Layers import downward only: ``cli -> mount -> {meta, chunks} -> bottom`` (errors, config).
``meta`` and ``chunks`` never import each other; ``mount`` joins them.
"""

__version__ = "0.1.0"
