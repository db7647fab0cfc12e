"""What makes a metadata server a Raft replica: its state machine and its transport.

* :class:`ReplicatedState` -- Raft's state machine: the issue-2 :class:`~.state.StateMachine` in
  ``<data>/state``. Committed commands are applied to it unchanged (between two awaits, like any
  ``apply``). It is derived state: rebuilt at every start from the newest snapshot plus the log,
  so it needs no fsync of its own. Its Raft snapshots are files
  (:class:`~.snapshots.FileSnapshotMachine`): ``checkpoint`` makes a RocksDB checkpoint (the
  memtable flushed, every SST hard-linked), ``restore_files`` hard-links a checkpoint's SSTs into
  a fresh state directory (copying its few small other files) and opens it -- a million-inode
  state is restored in well under a second, and never passes through memory. ``snapshot``/
  ``restore`` (the whole key space as one msgpack blob) remain for ``dump`` (what a dataset-mode
  mount reads, and what :func:`lakefs_fuse.lake.lake.snapshot_remote` restores) and for Raft
  snapshots stored by versions before file snapshots.
* :class:`WireTransport` -- Raft messages as one-way ``raft`` calls over authenticated
  connections between the servers (one per destination, made on demand in the server's nursery).
  It keeps the largest frame it sent and received per message type (``max_frames``: the
  ``status`` op shows them), so a test can check that no snapshot chunk outgrew its bound.

``server.py`` joins them with a :class:`~.raft.RaftNode`. Imports: base (errors, wire, rpc),
``raft``, ``state``; never ``chunks`` or anything above ``meta``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from .. import errors as E
from .. import rpc, wire
from .raft import Transport, pack_message, unpack_message
from .state import StateMachine

log = logging.getLogger("lakefs_fuse.meta.server")  # part of the server, logged as it

#: Largest frame between servers. Snapshots travel in chunks of RaftConfig.snapshot_chunk (1 MiB),
#: but an AppendEntries batch is bounded by entry count (max_batch), not bytes, and ``dump``
#: answers carry the whole state: the bound stays generous until both are bounded by bytes.
MAX_PAYLOAD = 1024 * 1024 * 1024


# ------------------------------------------------------------------------------ state machine


class ReplicatedState:
    """Raft's state machine: the metadata StateMachine, rebuilt from snapshot + log at start."""

    def __init__(self, path: Path):
        self.path = Path(path)
        shutil.rmtree(self.path, ignore_errors=True)  # derived state: Raft replays it
        self.sm = StateMachine(str(self.path), create=True)
        self._members: dict[int, str] | None = None  # the M keys, read once per change

    def apply(self, index: int, command: Any) -> Any:
        if not isinstance(command, list) or not command or not isinstance(command[0], str):
            raise E.Invalid("malformed metadata command")
        if command[0] == "set_meta_member":
            self._members = None
        return self.sm.apply(command)

    def snapshot(self, index: int) -> bytes:
        return self.sm.dump()[0]

    def restore(self, data: bytes) -> None:
        self.sm.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.sm = StateMachine(str(self.path), create=True)
        self._members = None
        self.sm.put_all(msgpack.unpackb(data, raw=False, use_list=True))

    def checkpoint(self, index: int, directory: str) -> None:
        """The state as of now (right after applying ``index``) as a RocksDB checkpoint."""
        self.sm.checkpoint(directory)

    def restore_files(self, directory: str) -> None:
        """Replace the state with the checkpoint in ``directory``, which stays as it is: SST files
        are immutable, so they are hard-linked; RocksDB rewrites the others (MANIFEST, CURRENT,
        OPTIONS, an empty log), so those few small files are copied."""
        self.sm.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(mode=0o700)
        for name in os.listdir(directory):
            src, dst = os.path.join(directory, name), self.path / name
            if name.endswith(".sst"):
                try:
                    os.link(src, dst)
                    continue
                except OSError:  # another file system: copy it
                    pass
            shutil.copyfile(src, dst)
        self.sm = StateMachine(str(self.path))
        self._members = None

    def members(self) -> dict[int, str]:
        """Member id -> address (read-only: shared until the next change). Every incoming Raft
        message looks its sender up here, so the table is not re-read from RocksDB each time."""
        if self._members is None:
            self._members = self.sm.meta_members()
        return self._members

    def close(self) -> None:
        self.sm.close()


# ----------------------------------------------------------------------------------- transport


class WireTransport(Transport):
    """Raft messages as one-way ``raft`` calls; one connection per destination, made on demand."""

    def __init__(self, node_id: int, address: str, secret: bytes, addresses: Callable[[int], str | None], *,
                 ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 1.0):
        self.node_id = node_id
        self.address = address
        self.secret = secret
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self._addresses = addresses  # id -> address (None: not a member it knows)
        self._learned: dict[int, str] = {}
        self._clients: dict[int, rpc.RpcClient] = {}
        self._retry_at: dict[int, float] = {}
        self._nursery: trio.Nursery | None = None
        send, self.incoming = trio.open_memory_channel(4096)
        self._incoming_send = send
        #: Largest frame payload per Raft message type: {"sent": {type: bytes}, "received": {...}}.
        self.max_frames: dict[str, dict[str, int]] = {"sent": {}, "received": {}}

    def _count_frame(self, way: str, kind: Any, size: int) -> None:
        seen = self.max_frames[way]
        kind = kind if isinstance(kind, str) else "?"
        if size > seen.get(kind, 0):
            seen[kind] = size

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def address_of(self, node_id: int) -> str | None:
        return self._addresses(node_id) or self._learned.get(node_id)

    async def send(self, to: int, message: dict[str, Any]) -> None:
        client = self._clients.get(to)
        if client is None or client.closed:
            client = await self._connect(to)
            if client is None:
                return
        payload = pack_message(message)
        self._count_frame("sent", message.get("t"), len(payload))
        try:
            await client.post("raft", {"src": self.node_id, "addr": self.address}, payload)
        except (wire.ConnectionLost, OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._clients.pop(to, None)

    async def _connect(self, to: int) -> rpc.RpcClient | None:
        now = trio.current_time()
        address = self.address_of(to)
        if address is None or now < self._retry_at.get(to, 0.0) or self._nursery is None:
            return None
        host, port = wire.parse_address(address)
        try:
            client = await rpc.RpcClient.connect(host, port, self.secret, self._nursery,
                                                  connect_timeout=self.connect_timeout,
                                                  max_payload=MAX_PAYLOAD, ssl_context=self.ssl_context)
        except (OSError, trio.TooSlowError, wire.ProtocolError) as exc:
            if to not in self._retry_at or now - self._retry_at[to] > 5:
                log.info("member %d (%s) unreachable: %s", to, address, exc)
            self._retry_at[to] = now + 0.5
            return None
        self._retry_at.pop(to, None)
        self._clients[to] = client
        return client

    def deliver(self, src: int, address: str, payload: bytes | bytearray) -> None:
        """A message arrived over the server (called by the request handler)."""
        if address and self._addresses(src) is None:
            self._learned[src] = address
        try:
            message = unpack_message(payload)
        except Exception as exc:  # noqa: BLE001 -- garbage from an authenticated peer: drop it
            raise E.Invalid(f"undecodable raft message: {exc}") from None
        if not isinstance(message, dict):
            raise E.Invalid("a raft message must be a map")
        self._count_frame("received", message.get("t"), len(payload))
        with contextlib.suppress(trio.WouldBlock):  # Raft retransmits; a full inbox: we are behind anyway
            self._incoming_send.send_nowait(message)

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()
        self._clients.clear()
