"""A metadata cluster from the operator's side: ``meta add``, ``remove``, ``rebuild`` and ``status``.

Each call reaches the cluster through any of the ``addresses`` given (the service follows the
leader) with the cluster secret read from ``secret_file``; a refusal is one
:class:`~lakefs_fuse.errors.UserError` line. A membership change is one Raft configuration change
at a time, made by the leader; it may wait for a new member to catch up, hence its longer timeout.
Rebuilding a member whose storage is corrupt is :func:`..meta.server.rebuild_member`'s (it knows
the member's directory); the status rows are :func:`.inspect.raft_status`'s.

Imports ``meta`` (the cluster client, the server's rebuild), ``lake`` (the secret), ``admin.inspect``
and the base layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from ..config import META_TIMEOUT
from ..lake.identity import cluster_secret
from ..meta import server
from ..meta.remote import MetaService
from .inspect import raft_status

#: Seconds a membership change may take: the leader commits it once the new configuration has a
#: majority, which may wait for an added member to catch up.
CHANGE_TIMEOUT = 60.0


def run_service(addresses: list[str], secret_file: Path | None, fn: Callable[[MetaService], Awaitable[Any]]) -> Any:
    """``await fn(service)`` against the metadata cluster at ``addresses``, then close the service."""
    secret = cluster_secret(secret_file)

    async def run():
        async with MetaService(addresses, secret, op_timeout=META_TIMEOUT) as service:
            return await fn(service)

    return trio.run(run)


def add_member(addresses: list[str], secret_file: Path | None, node_id: int, address: str) -> dict:
    """Make the server at ``address`` (started with ``meta serve --join``) voting member ``node_id``.
    Returns the members now, ``{id: address}`` (ids as the server sends them)."""
    async def add(service: MetaService) -> dict:
        res, _ = await service.call("add", {"id": node_id, "address": address}, timeout=CHANGE_TIMEOUT)
        return res.get("members", {})
    return run_service(addresses, secret_file, add)


def remove_member(addresses: list[str], secret_file: Path | None, node_id: int) -> dict:
    """Remove member ``node_id`` from the cluster (it may be stopped then). Returns the members now."""
    async def remove(service: MetaService) -> dict:
        res, _ = await service.call("remove", {"id": node_id}, timeout=CHANGE_TIMEOUT)
        return res.get("members", {})
    return run_service(addresses, secret_file, remove)


def rebuild_member(data_dir: Path, addresses: list[str], secret_file: Path | None) -> dict:
    """Re-seed the stopped member in ``data_dir`` from the members at ``addresses``: see
    :func:`..meta.server.rebuild_member`. Returns {"id", "set_aside", "members"}."""
    return trio.run(server.rebuild_member, data_dir, addresses, cluster_secret(secret_file))


def cluster_status(addresses: list[str], secret_file: Path | None) -> list[dict]:
    """Every member's Raft row (:func:`.inspect.raft_status`)."""
    return run_service(addresses, secret_file, raft_status)
