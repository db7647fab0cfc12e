"""``lakefs-fuse dump`` and ``load``: the whole metadata of a lake in one file, and back.

A dump holds every metadata key (inodes, directory entries, extents, chunk records, peers, the
format record), not file data: the shards stay where they are. ``load`` builds a new lake from a
dump whose chunk records point at the same peers -- a metadata backup restored, a lake moved off
its metadata servers (into an embedded lake), or onto metadata servers that hold none yet. The original
and the loaded lake must not both be used afterwards: they would hand out the same chunk ids.

File format (all msgpack)::

    {"format": "lakefs-fuse-dump", "version": 1, "keys": N, "source": ..., "uuid": ..., "at": ns}
    <bin: the key space, a msgpack array of N [key, value] pairs>
    <uint: xxh3-64 of that bin>

A dump is written to ``PATH.tmp`` and renamed, so a crash never leaves a partial file under the
name; ``load`` checks the checksum and the key count before it writes anything.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgpack
import xxhash

from ..errors import LakeError, UserError
from ..lake.lake import Lake, is_lake, write_marker
from ..meta import schema as S
from ..meta.commands import LoadKeys
from ..meta.schema import PeerRecord
from ..meta.state import StateMachine

DUMP_FORMAT = "lakefs-fuse-dump"
DUMP_VERSION = 1


async def dump(lake: Lake, path: Path) -> dict:
    from ..lake.view import MetadataView
    async with MetadataView(lake) as sm:  # the lake's own RocksDB, or a snapshot of a cluster's
        body, count = sm.dump()
    source = "embedded" if lake.sm is not None else "cluster " + ",".join(lake.meta_addresses or [])
    header = {"format": DUMP_FORMAT, "version": DUMP_VERSION, "keys": count, "source": source,
              "uuid": lake.uuid, "at": time.time_ns(),
              "data_dir": str(Path(lake.data_dir).resolve()) if lake.data_dir is not None else None}
    _write(path, [msgpack.packb(header), msgpack.packb(body, use_bin_type=True),
                  msgpack.packb(xxhash.xxh3_64_intdigest(body))])
    return {**header, "bytes": path.stat().st_size}


def _write(path: Path, parts: list[bytes]) -> None:
    """``parts`` to ``path``, durably and all or nothing (a temporary name, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_dump(path: Path) -> tuple[dict, list]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    try:
        header = next(unpacker)
        body = next(unpacker)
        checksum = next(unpacker)
    except (StopIteration, ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError) as exc:
        raise UserError(f"{path} is not a complete lakefs-fuse dump ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != DUMP_FORMAT:
        raise UserError(f"{path} is not a lakefs-fuse dump")
    if header.get("version") != DUMP_VERSION:
        raise UserError(f"{path}: dump version {header.get('version')} is not supported (this is {DUMP_VERSION})")
    if not isinstance(body, bytes) or xxhash.xxh3_64_intdigest(body) != checksum:
        raise UserError(f"{path}: checksum mismatch: the dump is damaged")
    pairs = msgpack.unpackb(body, raw=False, use_list=True)
    if len(pairs) != header.get("keys") or S.FORMAT not in {k for k, _ in pairs}:
        raise UserError(f"{path}: the dump does not hold a whole lake")
    return header, pairs


def _peers(pairs: list) -> list[PeerRecord]:
    """The storage peers recorded in a dump."""
    return [PeerRecord.from_bytes(S.peer_id_of_key(k), v) for k, v in pairs if k.startswith(S.PEER_PREFIX)]


def _rewritten(pairs: list, which: Callable[[bytes], bool], change: Callable[[bytes], bytes]) -> list:
    """A copy of the pairs with ``change(value)`` for the value of every key ``which`` picks."""
    return [[k, change(v) if which(k) else v] for k, v in pairs]


def _absolute_peers(pairs: list, source_dir: str | None) -> list:
    """Peer directories recorded relative to the dumped lake's data directory point there."""
    if not source_dir:
        return pairs
    root = source_dir

    def absolute(value: bytes) -> bytes:
        rec = PeerRecord.from_bytes(0, value)  # (the id is in the key; only the address changes)
        if rec.kind != "dir" or os.path.isabs(rec.address):
            return value
        rec.address = os.path.join(root, rec.address)
        return rec.to_bytes()
    return _rewritten(pairs, lambda k: k.startswith(S.PEER_PREFIX), absolute)


def load(path: Path, data_dir: Path, *, secret_file: Path | None = None, on_keys=None) -> dict:
    """A new embedded lake in ``data_dir`` (empty or absent) from the dump at ``path``;
    ``on_keys(n)`` is told of every batch of keys written."""
    header, pairs = read_dump(path)
    data_dir = Path(data_dir)
    if is_lake(data_dir) or (data_dir.exists() and any(data_dir.iterdir())):
        raise UserError(f"{data_dir} is not empty; load needs an empty or new directory")
    created = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        sm = StateMachine(str(data_dir / "meta"), create=True)
        try:
            sm.put_all(_absolute_peers(pairs, header.get("data_dir")), on_keys)
            sm.sync()
        finally:
            sm.close()
        # The same lake on new metadata: it keeps its id, which owns the shards it reads.
        write_marker(data_dir, secret_file, {"loaded_from": {"dump": str(Path(path).resolve()),
                                                             "source": header.get("source"),
                                                             "uuid": header.get("uuid")}},
                     lake_id=header.get("uuid"))
    except BaseException:
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            shutil.rmtree(data_dir / "meta", ignore_errors=True)
        raise
    return {"keys": len(pairs), "source": header.get("source"), "data_dir": str(data_dir)}


LOAD_BATCH = 5000


async def load_remote(path: Path, addresses: list[str], secret_file: Path, on_keys=None) -> dict:
    """Load a dump into metadata servers that hold no lake yet (migration: an embedded lake onto a
    cluster, or a cluster onto new servers). The lake gets this cluster's secret;
    its peers must be peer servers or buckets every mount can reach. It keeps the lake's id: the
    peers' shards belong to it (peer_server docstring)."""
    from .. import wire
    from ..lake.lake import cluster_secret
    from ..meta.remote import MetaService, RemoteMeta
    header, pairs = read_dump(path)
    secret = cluster_secret(secret_file)
    local = [p for p in _peers(pairs) if p.kind == "dir"]
    if local:
        raise UserError(f"{path}: the lake keeps shards in local directories ({local[0].address}, ...): "
                        "metadata servers need peer servers or buckets every mount can reach")

    def ours(value: bytes) -> bytes:  # this cluster's secret; the lake's own id, which owns its peers' shards
        fmt = S.unpack(value)
        fmt["secret_fp"] = wire.fingerprint(secret)
        fmt["uuid"] = header.get("uuid") or str(uuid.uuid4())
        return S.pack(fmt)
    out = _rewritten(pairs, lambda k: k == S.FORMAT, ours)
    out.sort(key=lambda kv: kv[0] == S.FORMAT)  # the format record last: a lake once it is there
    async with MetaService(addresses, secret, op_timeout=60.0) as service:
        meta = RemoteMeta(service, sessions=1)
        for i in range(0, len(out), LOAD_BATCH):
            batch = out[i:i + LOAD_BATCH]
            try:
                await meta.apply(LoadKeys(batch, i == 0))
            except LakeError as exc:
                raise UserError(f"metadata servers {','.join(addresses)}: {exc}") from None
            if on_keys:
                on_keys(len(batch))
        await meta.sync()
    return {"keys": len(pairs), "source": header.get("source"), "meta": addresses}
