"""A metadata server: one Raft replica of the lake's metadata, served over the wire protocol.

``lakefs-fuse meta serve`` runs :class:`MetaServer`. It joins three things:

* a :class:`~.raft.RaftNode` whose log lives in ``<data>/raft`` (:class:`~.raftlog.RocksStorage`,
  synced before any answer) and whose snapshots -- RocksDB checkpoints of the state, streamed to
  a follower in 1 MiB chunks (``snapshots.py``) -- in ``<data>/snapshots``;
* :class:`~.replica.ReplicatedState`, the issue-2 :class:`~.state.StateMachine` in ``<data>/state``
  as Raft's state machine. Committed commands are applied to it unchanged. It is rebuilt at every
  start from the newest snapshot (hard links of its checkpoint) plus the log, so it needs no
  fsync of its own;
* :class:`~.replica.WireTransport`, Raft messages as one-way ``raft`` calls over authenticated
  ``wire`` connections between the servers.

This module owns the request handler (the op table below), the server's identity and membership
upkeep, and ``meta rebuild``; ``replica.py`` holds the two Raft adapters. It imports base, ``raft``,
``raftlog``, ``replica``, ``state``, ``schema`` (and ``remote``, as a client of the cluster).

Client operations (all authenticated with the cluster secret)
-------------------------------------------------------------

=========  =================================  ============================================
op         arguments / payload                answer
=========  =================================  ============================================
apply      c (client id), s (seq);            payload = msgpack result. A failed command is
           payload = msgpack command          an error answer with its errno.
query      q (name); payload = msgpack args   payload = msgpack result, read on the leader under
                                              its lease (else after a ReadIndex round)
dump       --                                 payload = the whole state (dataset-mode mounts)
status     --                                 this member's Raft view (+ followers if leader;
                                              ``frames``: largest Raft frame sent/received by type)
members    --                                 {id: address} of the voters
add        id, address                        adds a voter (leader only)
remove     id                                 removes a voter (leader only)
hello      id, cluster                        id and cluster of this server
raft       src, addr; payload = message       one-way Raft message
=========  =================================  ============================================

A server that cannot take an ``apply``/``query``/``add``/``remove`` because it is not the
leader (or lost leadership mid-way) answers ``{"redirect": 1, "leader": address-or-None}``;
clients go there and retry the same ``(client id, seq)``, which the Raft session table applies
at most once.

Membership addresses live in the replicated state (``set_meta_member`` command, keys ``M``),
so every server and client learns them from the log; a founding server bootstraps them from
``--peers``. ``<data>/server.json`` records the server's id and cluster id, so a server cannot
be restarted under another identity, and a peer list that does not match the cluster is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import trio

from .. import errors as E
from .. import rpc, wire
from ..private import make_private, owner_only_umask
from . import schema as S
from .commands import Command, SetMetaMember
from .raft import (
    LEADER,
    CommitUnknown,
    NotLeader,
    RaftConfig,
    RaftError,
    RaftNode,
    RaftObserver,
    SessionExpired,
)
from .raftlog import RocksStorage, StorageCorrupt, unpack
from .replica import MAX_PAYLOAD, ReplicatedState, WireTransport

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"


def cluster_id(members: dict[int, str], secret: bytes) -> str:
    """A founding cluster's id: its member list and secret, so every founder derives the same."""
    text = ",".join(f"{i}={a}" for i, a in sorted(members.items())) + "/" + wire.fingerprint(secret)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- server


def _encode_inode(inode: S.Inode) -> list:
    return [inode.ino, inode.to_bytes()]


def _encode_chunk(rec: S.ChunkRecord) -> list:
    return [rec.chunk_id, rec.to_bytes()]


#: Query name -> how its result travels (the client decodes with the mirror table in remote.py).
QUERIES = {
    "format_record": lambda r: r,
    "getattr": _encode_inode,
    "lookup": _encode_inode,
    "readdir": lambda rows: [[name, inode.ino, inode.to_bytes(), cookie] for name, inode, cookie in rows],
    "extents": lambda exts: [[e.file_off, e.length, e.chunk_id, e.chunk_off] for e in exts],
    "readlink": lambda r: r,
    "getxattr": lambda r: r,
    "listxattr": lambda r: r,
    "chunk": _encode_chunk,
    "chunks": lambda recs: [_encode_chunk(r) for r in recs],
    "peers": lambda peers: [[p.peer_id, p.to_bytes()] for p in peers],
    "orphans": lambda r: r,
    "delete_queue": lambda rows: [list(x) for x in rows],
    "count_inodes": lambda r: r,
    "stored_data": lambda r: r,
    "sparse_chunks": lambda r: r,
    "next_chunk_id": lambda r: r,
}


class _Observer(RaftObserver):
    def __init__(self, server: MetaServer):
        self.server = server

    def became_leader(self, node: RaftNode) -> None:
        log.info("member %d is the leader in term %d", node.id, node.term)
        self.server._leader_changed()


class MetaServer:
    """One metadata server. ``await server.run(task_status)`` serves until cancelled."""

    def __init__(self, node_id: int, data_dir: Path, listen: str, secret: bytes, *,
                 peers: dict[int, str] | None = None, join: str | None = None,
                 raft_config: RaftConfig | None = None, ssl_server=None, ssl_client=None):
        self.id = node_id
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.host, self.port = wire.parse_address(listen)
        self.secret = secret
        self.join = join
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_private(self.data_dir, (SERVER_FILE,))  # the log and state hold every file name
        self._new_identity = False
        self.identity = self._check_identity(peers)
        self.founders: dict[int, str] = {int(k): v for k, v in self.identity.get("founders", {}).items()}
        try:
            with owner_only_umask():
                self.storage = RocksStorage(str(self.data_dir / "raft"),
                                            snapshot_dir=str(self.data_dir / "snapshots"))
            make_private(self.data_dir / "raft")
        except StorageCorrupt as exc:
            raise _corrupt_member(node_id, self.data_dir, exc) from None
        try:
            self.state = ReplicatedState(self.data_dir / "state")
        except BaseException:
            self.storage.close()
            raise
        self.transport = WireTransport(node_id, listen, secret, self._address_of, ssl_context=ssl_client)
        cfg = raft_config or RaftConfig(snapshot_every=20000, lease_reads=True)
        try:
            self.node = RaftNode(node_id, self.storage, self.transport, self.state, config=cfg,
                                 initial_voters=list(self.founders) if self.founders else None,
                                 observer=_Observer(self))
        except StorageCorrupt as exc:
            self.close()
            raise _corrupt_member(node_id, self.data_dir, exc) from None
        self._members_wanted = trio.Event()
        self._internal_seq = 0
        self._internal_lock = trio.Lock()  # one internal command at a time: one session, in order
        self.wire_stats = rpc.ServerStats()
        self.op_counts: dict[str, int] = {}
        self.bound_port: int | None = None

    # ---------------------------------------------------------------- identity

    def _check_identity(self, peers: dict[int, str] | None) -> dict:
        """Load or create server.json; refuse an id, cluster or member list that does not match."""
        path = self.data_dir / SERVER_FILE
        try:
            ident = json.loads(path.read_text())
        except FileNotFoundError:
            ident = None
        except (OSError, ValueError) as exc:
            raise E.UserError(f"{path} is unreadable: {exc}") from None
        if ident is not None:
            if ident.get("id") != self.id:
                raise E.UserError(f"{self.data_dir} holds the state of metadata member {ident.get('id')}, "
                                  f"not {self.id}; start it with --id {ident.get('id')} or use another --data")
            founders = {int(k): v for k, v in ident.get("founders", {}).items()}
            if peers is not None and founders and peers != founders and peers != ident.get("members_seen"):
                raise E.UserError(
                    f"--peers {_fmt(peers)} does not match this server's cluster ({_fmt(founders)}); "
                    "restart without --peers, and change membership with 'lakefs-fuse meta add/remove'")
            return ident
        if peers is None and self.join is None:
            raise E.UserError(f"{self.data_dir} is a new server: give --peers ID=HOST:PORT,... to found a "
                              "cluster or --join HOST:PORT to join one")
        if peers is not None:
            if self.id not in peers:
                raise E.UserError(f"--peers does not list this server's --id {self.id}")
            if wire.parse_address(peers[self.id]) != (self.host, self.port) and self.port != 0:
                raise E.UserError(f"--peers gives member {self.id} the address {peers[self.id]}, "
                                  f"but it listens on {self.listen}")
            ident = {"id": self.id, "cluster": cluster_id(peers, self.secret),
                     "founders": {str(k): v for k, v in peers.items()}}
        else:
            ident = {"id": self.id, "cluster": None, "founders": {}}
        self._write_identity(ident)
        self._new_identity = True
        return ident

    def _write_identity(self, ident: dict) -> None:
        path = self.data_dir / SERVER_FILE
        tmp = path.with_suffix(".tmp")
        with owner_only_umask():
            tmp.write_text(json.dumps(ident, indent=1) + "\n")
        os.replace(tmp, path)

    async def _verify_founders(self) -> None:
        """Ask each founding member who it is; refuse to run beside a mismatched cluster."""
        if not self.founders:
            return
        async with trio.open_nursery() as nursery:
            for node_id, address in self.founders.items():
                if node_id != self.id:
                    nursery.start_soon(self._verify_one, node_id, address)

    async def _verify_one(self, node_id: int, address: str) -> None:
        from .remote import MetaService

        async with MetaService([address], self.secret, ssl_context=self.ssl_client, connect_timeout=1.0) as service:
            try:
                client = await service._client(address)
                res, _ = await client.call("hello", {"id": self.id, "cluster": self.identity["cluster"]},
                                           timeout=2.0)
            except wire.SecretRejected:
                raise E.UserError(f"member {node_id} at {address} refused our cluster secret") from None
            except (OSError, trio.TooSlowError, wire.ProtocolError, wire.ConnectionLost, wire.RemoteError) as exc:
                log.info("could not check member %d at %s: %s", node_id, address, exc)
                return
        if res.get("id") != node_id:
            raise E.UserError(f"the server at {address} is member {res.get('id')}, but --peers names it "
                              f"member {node_id}")
        if res.get("cluster") and res.get("cluster") != self.identity["cluster"]:
            raise E.UserError(f"member {node_id} at {address} belongs to another cluster "
                              f"({res.get('cluster')}); check --peers")

    # ---------------------------------------------------------------- members

    def members(self) -> dict[int, str]:
        """Voter addresses: the replicated table, else the founders'."""
        table = self.state.members()
        out = {i: table.get(i) or self.founders.get(i) or self.transport._learned.get(i) for i in self.node.voters}
        if self.id in out and out[self.id] is None:
            out[self.id] = self.listen
        return {i: a for i, a in out.items() if a}

    def _address_of(self, node_id: int) -> str | None:
        return self.state.members().get(node_id) or self.founders.get(node_id)

    def _leader_address(self) -> str | None:
        leader = self.node.leader_id
        if leader is None:
            return None
        if leader == self.id:
            return self.listen
        return self._address_of(leader) or self.transport._learned.get(leader)

    def _leader_changed(self) -> None:
        self._members_wanted.set()

    async def _maintain_members(self) -> None:
        """As leader, make sure the replicated member table names every voter."""
        while True:
            await self._members_wanted.wait()
            self._members_wanted = trio.Event()
            if not self.node.is_leader:
                continue
            table = self.state.members()
            missing = {i: self.founders[i] for i in self.node.voters if i not in table and i in self.founders}
            if self.id in self.node.voters and self.id not in table:
                missing[self.id] = self.listen
            for node_id, address in missing.items():
                try:
                    await self._submit_internal(SetMetaMember(node_id, address))
                except (RaftError, E.LakeError) as exc:
                    log.info("could not record member %d: %s", node_id, exc)
                    self._members_wanted.set()
                    await trio.sleep(0.5)
                    break
            self._record_members()

    def _record_members(self) -> None:
        seen = self.members()
        if seen and seen != {int(k): v for k, v in self.identity.get("members_seen", {}).items()}:
            self.identity["members_seen"] = {str(k): v for k, v in seen.items()}
            self._write_identity(self.identity)

    async def _submit_internal(self, command: Command) -> Any:
        # Server-internal commands use the server's own session id (negative: never a client's);
        # the seq is the clock so it keeps rising across restarts.
        async with self._internal_lock:
            self._internal_seq = max(self._internal_seq + 1, time.time_ns())
            try:
                return await self.node.submit(-self.id, self._internal_seq, command.to_wire())
            except SessionExpired:
                # No session (the first internal command, or none for session_ttl): the refusal
                # proves this command was not applied, so it opens the session as seq 1.
                self._internal_seq = 1
                return await self.node.submit(-self.id, 1, command.to_wire())

    async def _join(self) -> None:
        """A new server asks the cluster (through any member) to add it as a voter. A member
        re-seeded by ``meta rebuild`` does the same through the members recorded then."""
        through = [self.join] if self.join else list(self.identity.get("rejoin") or [])
        if self.node.voters or not through:
            return
        from .remote import MetaService  # a client of the cluster, like any other

        async with MetaService(through, self.secret, ssl_context=self.ssl_client, op_timeout=60.0) as service:
            try:
                info = await service.call("hello", {"id": self.id, "cluster": None})
                if info[0].get("cluster"):
                    self.identity["cluster"] = info[0]["cluster"]
                    self._write_identity(self.identity)
                await service.call("add", {"id": self.id, "address": self.listen}, timeout=60.0)
                log.info("joined the cluster through %s as member %d", ",".join(through), self.id)
            except E.LakeError as exc:
                raise E.UserError(f"could not join the cluster through {','.join(through)}: {exc}") from None
        if self.identity.pop("rejoin", None) is not None:
            self._write_identity(self.identity)

    # ---------------------------------------------------------------- requests

    async def handle(self, op: str, args: dict, payload: bytearray):
        name = op if op in _OPS else "other"  # a client's unknown op must not add a series
        self.op_counts[name] = self.op_counts.get(name, 0) + 1
        if op == "raft":
            src, addr = args.get("src"), args.get("addr", "")
            if type(src) is not int or not isinstance(addr, str):
                raise E.Invalid("raft message without a sender")
            self.transport.deliver(src, addr, payload)
            return {}, b""
        if op == "apply":
            client_id, seq = args.get("c"), args.get("s")
            if type(client_id) is not int or client_id < 0 or type(seq) is not int:
                raise E.Invalid("apply needs an integer client id and seq")
            command = _unpack_payload(payload)
            if not isinstance(command, list) or not command or not isinstance(command[0], str):
                raise E.Invalid("malformed metadata command")
            try:
                value = await self.node.submit(client_id, seq, command)
            except RaftError as exc:
                return self._redirect(exc), b""
            return {}, S.pack(value)
        if op == "query":
            query = args.get("q")
            if not isinstance(query, str) or (encode := QUERIES.get(query)) is None:
                raise E.Invalid(f"unknown query {query!r}")
            qargs = _unpack_payload(payload)
            if not isinstance(qargs, list):
                raise E.Invalid("query arguments must be a list")
            try:
                await self.node.read_index()
            except RaftError as exc:
                return self._redirect(exc), b""
            try:
                result = getattr(self.state.sm, query)(*qargs)
            except TypeError as exc:
                raise E.Invalid(f"bad arguments for {query}: {exc}") from None
            return {}, S.pack(encode(result))
        if op == "dump":
            # The whole metadata as of now (for a dataset-mode mount that reads it locally).
            try:
                await self.node.read_index()
            except RaftError as exc:
                return self._redirect(exc), b""
            return {"applied": self.node.last_applied}, self.state.snapshot(self.node.last_applied)
        if op == "status":
            return self.status(), b""
        if op == "members":
            return {"members": {str(k): v for k, v in self.members().items()}}, b""
        if op == "hello":
            return {"id": self.id, "cluster": self.identity.get("cluster")}, b""
        if op in ("add", "remove"):
            return await self._change_membership(op, args), b""
        raise E.LakeError(f"unknown op {op!r}", err=errno.EOPNOTSUPP)

    def _redirect(self, exc: RaftError) -> dict:
        if isinstance(exc, CommitUnknown):
            log.debug("commit unknown: %s", exc)
        leader = self._leader_address()
        return {"redirect": 1, "leader": leader if leader != self.listen or self.node.is_leader else None}

    async def _change_membership(self, op: str, args: dict) -> dict:
        node_id = args.get("id")
        if type(node_id) is not int or node_id < 1:
            raise E.Invalid("membership change needs a member id >= 1")
        if not self.node.is_leader:
            return self._redirect(NotLeader())
        try:
            if op == "add":
                address = args.get("address")
                if not isinstance(address, str):
                    raise E.Invalid("add needs an address")
                try:
                    wire.parse_address(address)
                except ValueError as exc:
                    raise E.Invalid(str(exc)) from None
                known = self.state.members().get(node_id)
                if node_id in self.node.voters and known not in (None, address):
                    raise E.Exists(f"member {node_id} already exists with address {known}")
                await self._submit_internal(SetMetaMember(node_id, address))
                if node_id not in self.node.voters:
                    await self.node.add_voter(node_id)
            else:
                if node_id not in self.node.voters:
                    raise E.NotFound(f"member {node_id} is not in the cluster")
                if len(self.node.voters) == 1:
                    raise E.Invalid("cannot remove the last member")
                await self.node.remove_voter(node_id)
                if self.node.is_leader:
                    await self._submit_internal(SetMetaMember(node_id, None))
        except RaftError as exc:
            return self._redirect(exc)
        self._record_members()
        return {"members": {str(k): v for k, v in self.members().items()}}

    def status(self) -> dict:
        node = self.node
        out = {"id": self.id, "address": self.listen, "role": node.role, "term": node.term,
               "leader": node.leader_id, "leader_address": self._leader_address(),
               "commit_index": node.commit_index, "last_applied": node.last_applied,
               "last_index": node.last_index, "snapshot_index": node.snapshot_index,
               "voters": sorted(node.voters), "cluster": self.identity.get("cluster"),
               "members": {str(k): v for k, v in self.members().items()}, "stats": dict(node.stats),
               "frames": self.transport.max_frames}
        if node.role == LEADER:
            now = trio.current_time()
            out["followers"] = {
                str(peer): {"match": pr.match, "lag": node.last_index - pr.match,
                            "last_ack_s": round(now - pr.last_ack, 3)}
                for peer, pr in node._progress.items()}
        return out

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            try:
                await self._verify_founders()
            except BaseException:
                if self._new_identity:  # refused on first start: leave no identity behind
                    (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
                raise
            async with trio.open_nursery() as nursery:
                self.transport.start(nursery)
                self.bound_port = await nursery.start(partial_serve(self))
                await nursery.start(self._run_node)
                nursery.start_soon(self._maintain_members)
                nursery.start_soon(self._join)
                log.info("metadata member %d serving on %s:%d (data %s)", self.id, self.host,
                         self.bound_port, self.data_dir)
                task_status.started(self.bound_port)
        finally:
            with trio.CancelScope(shield=True):
                await self.transport.aclose()
            self.close()

    async def _run_node(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.node.run(task_status=task_status)
        except Exception as exc:
            # Fail-stop: a storage error (disk full, I/O error) or a bug must not leave a member
            # half-working. Its log and snapshot are intact up to the last acknowledged write.
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]
            log.error("member %d: Raft node failed, stopping", self.id, exc_info=cause)
            first = (str(cause).splitlines() or [type(cause).__name__])[0]
            raise E.UserError(f"metadata member {self.id} stopped: {first}") from None

    def close(self) -> None:
        for what, closer in (("state", self.state.close), ("raft log", self.storage.close)):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 -- e.g. a full disk; everything acknowledged is synced
                log.warning("member %d: closing the %s failed: %s", self.id, what, exc)
        make_private(self.data_dir / "raft")  # files flushes and compactions made since the open


_OPS = frozenset({"raft", "apply", "query", "dump", "status", "members", "add", "remove", "hello"})


def _corrupt_member(node_id: int, data_dir: Path, exc: StorageCorrupt) -> E.UserError:
    return E.UserError(
        f"metadata member {node_id}: its Raft storage is corrupt ({exc}); re-seed it from the other members: "
        f"lakefs-fuse meta rebuild --data {data_dir} --meta HOST:PORT,... --secret-file FILE "
        "(docs/operations.md, 'Recovering from corrupt metadata')")


async def rebuild_member(data_dir: Path, addresses: list[str], secret: bytes) -> dict:
    """Re-seed the stopped member whose directory is ``data_dir`` from the members at ``addresses``.

    Raft forbids a voter to forget what it stored (its votes and acknowledged entries count
    towards commits), so the member is first removed from the cluster by the others; then its
    storage is set aside, and its identity file says to join again through ``addresses``. The
    next ``meta serve`` of the directory asks to be added back and receives a snapshot of the
    whole metadata from the leader. Returns {"id", "set_aside", "members"}.
    """
    import fcntl

    from .remote import MetaService

    data_dir = Path(data_dir)
    path = data_dir / SERVER_FILE
    try:
        ident = json.loads(path.read_text())
        node_id = int(ident["id"])
    except FileNotFoundError:
        raise E.UserError(f"{data_dir} is not a metadata server's directory (no {SERVER_FILE})") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise E.UserError(f"{path} is unreadable: {exc}") from None
    lock = data_dir / "raft" / "LOCK"
    if lock.exists():  # RocksDB holds a POSIX lock on it while the member runs
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise E.UserError(f"metadata member {node_id} is running on {data_dir}; stop it first") from None
        finally:
            os.close(fd)
    async with MetaService(addresses, secret, op_timeout=60.0) as service:
        try:
            hello, _ = await service.call("hello", {"id": node_id, "cluster": None})
            if ident.get("cluster") and hello.get("cluster") and hello["cluster"] != ident["cluster"]:
                raise E.UserError(f"{','.join(addresses)} is another cluster ({hello['cluster']}) than member "
                                  f"{node_id}'s ({ident['cluster']})")
            if hello.get("id") == node_id:
                raise E.UserError(f"member {node_id} itself answers at {','.join(addresses)}: stop it, and "
                                  "give --meta the other members")
            members, _ = await service.call("members")
            if str(node_id) in members.get("members", {}):
                res, _ = await service.call("remove", {"id": node_id}, timeout=60.0)
                members = res
        except E.LakeError as exc:
            raise E.UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
    aside = data_dir / f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for name in ("raft", "state", "snapshots"):
        if (data_dir / name).exists():
            os.replace(data_dir / name, aside / name)
    ident = {"id": node_id, "cluster": ident.get("cluster") or hello.get("cluster"), "founders": {},
             "rejoin": list(addresses)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ident, indent=1) + "\n")
    os.replace(tmp, path)
    return {"id": node_id, "set_aside": str(aside), "members": members.get("members", {})}


def partial_serve(server: MetaServer):
    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        await rpc.serve(server.handle, server.host, server.port, server.secret, max_payload=MAX_PAYLOAD,
                        ssl_context=server.ssl_server, stats=server.wire_stats, task_status=task_status)
    return serve


def _unpack_payload(payload) -> Any:
    try:
        return unpack(payload)
    except Exception as exc:  # noqa: BLE001 -- bad bytes from a client: its error, not ours
        raise E.Invalid(f"undecodable payload: {exc}") from None


def _fmt(members: dict[int, str]) -> str:
    return ",".join(f"{i}={a}" for i, a in sorted(members.items()))


def meta_families(server: MetaServer):
    """Prometheus families of a metadata member: its Raft view (see :mod:`lakefs_fuse.metrics`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from ..metrics import counter, gauge, labelled

    node = server.node
    yield gauge("lakefs_raft_term", "Current Raft term", node.term)
    yield gauge("lakefs_raft_is_leader", "1 on the leader", float(node.role == LEADER))
    yield labelled(GaugeMetricFamily, "lakefs_raft_role", "1 for this member's role", ["role"],
                   [([str(node.role)], 1.0)])
    yield gauge("lakefs_raft_leader_known", "1 while this member knows a leader", float(node.leader_id is not None))
    yield gauge("lakefs_raft_commit_index", "Highest log index known committed", node.commit_index)
    yield gauge("lakefs_raft_applied_index", "Highest log index applied to the state", node.last_applied)
    yield gauge("lakefs_raft_last_index", "Last index in this member's log", node.last_index)
    yield gauge("lakefs_raft_commit_lag", "Entries in the log not yet committed (last - commit)",
                node.last_index - node.commit_index)
    yield gauge("lakefs_raft_voters", "Voting members", len(node.voters))
    stats = dict(node.stats)
    for key, doc in (("leader_changes", "Leaders this member has seen take over (flapping when it climbs)"),
                     ("elections", "Elections this member started"),
                     ("snapshots_taken", "Snapshots of the state taken"),
                     ("snapshots_installed", "Snapshots installed from a leader"),
                     ("send_errors", "Raft messages that could not be sent")):
        yield counter(f"lakefs_raft_{key}", doc, stats.get(key, 0))
    if node.role == LEADER:
        progress = list(node._progress.items())
        yield labelled(GaugeMetricFamily, "lakefs_raft_follower_lag", "Entries a follower is behind the leader",
                       ["member"], [([str(peer)], node.last_index - pr.match) for peer, pr in progress])
    w = server.wire_stats
    yield counter("lakefs_meta_connections", "Connections accepted", w.connections)
    yield counter("lakefs_meta_auth_failures", "Connections refused: wrong or no cluster secret", w.auth_failures)
    yield counter("lakefs_meta_protocol_errors", "Connections closed for a malformed frame", w.protocol_errors)
    yield labelled(CounterMetricFamily, "lakefs_meta_requests", "Requests by op", ["op"],
                   [([op], n) for op, n in sorted(list(server.op_counts.items()))])
