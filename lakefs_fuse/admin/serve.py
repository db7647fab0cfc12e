"""Running a server in the foreground: ``peer serve`` (shards) and ``meta serve`` (a metadata replica).

Each function checks what it was given (the listen address, the cluster secret, TLS files, the
data directory) and turns every refusal into one :class:`~lakefs_fuse.errors.UserError` line,
starts the optional Prometheus endpoint (``--metrics``; its heartbeat runs in the server's
nursery, so /healthz says alive only while the event loop turns), serves, and returns when
SIGTERM or SIGINT arrives: the nursery is cancelled and the server's own cleanup runs.

The caller sets up logging first. Imports ``chunks`` (the peer server), ``meta`` (the metadata
server), ``metrics`` and the base layer.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from .. import wire
from ..chunks.peer_server import PeerServer, peer_families
from ..errors import UserError
from ..meta.raft import RaftConfig
from ..meta.server import MetaServer, meta_families
from ..metrics import MetricsServer, start_endpoint


def serve_peer(data_dir: Path, listen: str, *, secret_file: Path, zone: str = "", tls_cert: Path | None = None,
               tls_key: Path | None = None, metrics: str | None = None) -> None:
    """Serve the shards in ``data_dir`` on ``listen`` (HOST:PORT) to lakes that know the secret."""
    try:
        host, port = wire.parse_address(listen)
        secret = wire.load_secret(secret_file)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        ssl_context = wire.server_tls_context(str(tls_cert), str(tls_key)) if tls_cert else None
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise UserError(str(exc)) from None
    try:
        server = PeerServer(data_dir, zone=zone)
    except (OSError, ValueError) as exc:
        raise UserError(f"{data_dir}: {exc}") from None
    endpoint = heartbeat = None
    if metrics:
        endpoint, heartbeat = start_endpoint(metrics, partial(peer_families, server), lambda: server.serving)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if heartbeat is not None:
                nursery.start_soon(heartbeat.run)
            try:
                bound = await nursery.start(partial(server.serve, ssl_context=ssl_context), host, port, secret)
            except (OSError, BaseExceptionGroup) as exc:
                _cannot_listen(listen, exc)
            server.serving = True
            logging.getLogger("lakefs_fuse.peer").info("peer %s serving %s on %s:%s", server.ident, data_dir,
                                                       host, bound)
            await _until_stopped()
            server.serving = False
            nursery.cancel_scope.cancel()

    _run(run, endpoint)


def serve_meta(node_id: int, data_dir: Path, listen: str, *, secret_file: Path, members: dict[int, str] | None,
               join: str | None, snapshot_every: int, metrics: str | None = None) -> None:
    """Serve one replica of a lake's metadata: member ``node_id`` of a cluster founded with
    ``members`` (first start), joining one through ``join`` (first start of an added member), or
    neither (a restart: the member's directory knows its cluster)."""
    try:
        wire.parse_address(listen)
        secret = wire.load_secret(secret_file)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    try:
        server = MetaServer(node_id, data_dir, listen, secret, peers=members, join=join,
                            raft_config=RaftConfig(snapshot_every=snapshot_every, lease_reads=True))
    except OSError as exc:
        raise UserError(f"{data_dir}: {exc}") from None
    except Exception as exc:  # rocksdict: locked or corrupt database
        if isinstance(exc, UserError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{data_dir}: cannot open the metadata store: {first}") from None
    endpoint = heartbeat = None
    if metrics:
        try:
            endpoint, heartbeat = start_endpoint(metrics, partial(meta_families, server),
                                                 lambda: server.node.leader_id is not None)
        except UserError:
            server.close()
            raise

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if heartbeat is not None:
                nursery.start_soon(heartbeat.run)
            try:
                await nursery.start(server.run)
            except (OSError, BaseExceptionGroup) as exc:  # the server's own nursery wraps it in a group
                _cannot_listen(listen, exc)
            await _until_stopped()
            logging.getLogger("lakefs_fuse.meta").info("member %d stopping", node_id)
            nursery.cancel_scope.cancel()

    _run(run, endpoint)


def _cannot_listen(listen: str, exc: BaseException) -> NoReturn:
    """A server that failed to start: one line if an OSError (a port in use, an address not here)
    is why, found inside the groups its nurseries wrap it in; anything else as it was."""
    cause: BaseException | None = exc
    while isinstance(cause, BaseExceptionGroup):
        cause = next((e for e in cause.exceptions
                      if isinstance(e, OSError | BaseExceptionGroup)), None)
    if isinstance(cause, OSError):
        raise UserError(f"cannot listen on {listen}: {cause.strerror or cause}") from None
    raise exc


async def _until_stopped() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


def _run(run: Callable[[], Awaitable[None]], endpoint: MetricsServer | None) -> None:
    """``trio.run`` a server, then close its metrics endpoint; a UserError from inside its
    nurseries comes out alone (one line)."""
    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        match, _rest = group.split(UserError)
        if match is not None:
            first: BaseException = match
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        raise
    finally:
        if endpoint is not None:
            endpoint.close()
