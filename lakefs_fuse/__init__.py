"""lakefs-fuse: a POSIX filesystem over erasure-coded chunks, built for training reads.

Two ways in: ``lakefs-fuse mount`` (FUSE), and in-process, without FUSE::

    import lakefs_fuse
    lake = lakefs_fuse.connect(data="/srv/lake")          # or meta="h1:7000,...", secret_file=...
    with lake.open("runs/ckpt.pt", "wb") as f: ...

Layers import downward only: ``cli -> admin -> mount -> lake -> {meta, chunks} -> base``, and the
client (``lakefs_fuse.client``) beside admin; see docs/architecture.md. ``connect`` loads the
client on first use, so ``import lakefs_fuse`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["connect"]


def __getattr__(name: str) -> Any:
    if name == "connect":
        from .client.lake import connect
        return connect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
