"""A readable copy of a lake's whole metadata, for tools that scan it (fsck, repair reports, dump)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..meta.state import StateMachine
from .lake import Lake, snapshot_remote


class MetadataView:
    """A readable StateMachine of the lake's metadata: its own (embedded) or a snapshot (cluster)."""

    def __init__(self, lake: Lake):
        self.lake = lake
        self.sm: StateMachine | None = lake.sm
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> StateMachine:
        if self.sm is None:
            addresses, secret = self.lake.meta_addresses, self.lake.secret
            assert addresses is not None and secret is not None, "a lake without its own metadata is a cluster's"
            self._tmp = tempfile.TemporaryDirectory(prefix="lakefs-fsck.")
            self.sm = await snapshot_remote(addresses, secret, Path(self._tmp.name) / "meta")
        return self.sm

    async def __aexit__(self, *exc: object) -> None:
        if self._tmp is not None:
            assert self.sm is not None, "__aenter__ took the snapshot"
            self.sm.close()
            self._tmp.cleanup()
