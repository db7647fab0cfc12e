"""A bucket on an S3-compatible object store as a storage peer.

A peer address ``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P&capacity=SIZE]`` names a
bucket (and a key prefix inside it) on AWS S3 or any S3-compatible store (SeaweedFS, MinIO, Ceph
RGW, ...). ``endpoint`` defaults to AWS (or ``AWS_ENDPOINT_URL``). Credentials come from where
botocore looks for them: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the environment, the
shared credentials file, or the named ``profile`` in it; requests are signed with SigV4 by botocore.
Each shard is one object ``PREFIX<chunk id:016x>.<index>`` holding exactly the bytes a shard file
holds (header with per-64 KiB-block xxh3 sums, then the payload), so a range read is verified the
same way as from a disk, and a bucket can be copied to a peer directory and back.

Reads fetch only the blocks a range covers (one ranged GET); the first read of a shard takes the
header along in the same request and keeps it (shards never change), later ones skip it. Since a
store is slow to answer compared to a disk, the chunk client's parallel shard reads and the mount's
read-ahead do the hiding. ``sync`` is a no-op: a PUT is durable when it is acknowledged.

Errors: a missing object is :class:`ShardMissing`; wrong credentials, a missing bucket or an
unreachable endpoint are :class:`PeerUnavailable` with a message that names the cause, and mark the
peer down (``health``) so a dead store costs one timeout, not one per read; a HEAD of the bucket
is the probe that decides when it is back. Probes run in the owner's nursery (``async with
S3Store(...)``, or ``store.bind(nursery)``: an open lake binds its stores). A read's thread may be
abandoned (the chunk client reads around a store that is slow to answer): its late bytes land in a
buffer nobody reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from urllib.parse import parse_qs, urlsplit

import trio
import xxhash

from .. import rpc
from ..errors import UserError
from .health import PeerHealth
from .shardfile import BLOCK, ShardCorrupt, ShardMissing, encode_header, parse_header
from .store import OWNER_FILE, ForeignLake, PeerUnavailable

log = logging.getLogger(__name__)

_HEAD_GUESS = 4096
#: Headers kept per store (an 8+n*8 byte table per shard: ~40 bytes for a small chunk's shard).
_HEADERS_KEPT = 65536
_UNBOUNDED = 1 << 50  # what a bucket reports as its size and free space without ?capacity=


def is_s3_address(address: str) -> bool:
    return address.startswith("s3://")


class S3Address:
    """A parsed ``s3://`` peer address; a UserError names anything wrong with it."""

    KEYS = {"endpoint", "region", "profile", "capacity"}

    def __init__(self, address: str):
        parts = urlsplit(address)
        if parts.scheme != "s3" or not parts.netloc:
            raise UserError(f"{address!r}: an S3 peer is s3://BUCKET[/PREFIX][?endpoint=URL&region=R&profile=P]")
        self.address = address
        self.bucket = parts.netloc
        prefix = parts.path.lstrip("/")
        self.prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(query) - self.KEYS
        if unknown:
            raise UserError(f"{address!r}: unknown option {sorted(unknown)[0]!r} "
                            f"(known: {', '.join(sorted(self.KEYS))})")
        self.endpoint = query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_ENDPOINT_URL") or None
        if self.endpoint and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise UserError(f"{address!r}: endpoint must be an http:// or https:// URL")
        self.region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
            or "us-east-1"
        self.profile = query.get("profile") or None
        self.capacity = None
        if query.get("capacity"):
            from ..config import parse_size
            self.capacity = parse_size(query["capacity"])

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


class S3Store(PeerHealth):
    """The :class:`~lakefs_fuse.chunks.store.ShardStore` of one bucket (+ prefix)."""

    def __init__(self, peer_id: int, address: str, *, limiter: trio.CapacityLimiter | None = None,
                 connect_timeout: float = 3.0, read_timeout: float = 20.0):
        import boto3
        from botocore.config import Config

        self.peer_id = peer_id
        self.address = address
        self.s3 = S3Address(address)
        self._init_health()
        self.limiter = limiter or trio.CapacityLimiter(16)
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=32,
                        s3={"addressing_style": "path"}, signature_version="s3v4")
        try:
            session = boto3.session.Session(profile_name=self.s3.profile)
        except Exception as exc:  # botocore.exceptions.ProfileNotFound and friends
            raise UserError(f"{address}: {exc}") from None
        self.client = session.client("s3", endpoint_url=self.s3.endpoint, region_name=self.s3.region, config=config)
        self._headers: OrderedDict[tuple[int, int], tuple[int, int, tuple[int, ...], int]] = OrderedDict()
        self._headers_lock = threading.Lock()
        self._nursery: trio.Nursery | None = None  # the owner's: probes run there (``health``)
        self._background: rpc.Background | None = None

    # ------------------------------------------------------------- owner

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the store's probes in the owner's ``nursery`` (an open lake binds all its stores)."""
        if self._nursery is not None:
            raise RuntimeError(f"{self.name}: the store already has an owner")
        self._nursery = nursery

    async def release(self) -> None:
        """Give the owner's nursery back: no new probes (a running one ends with that nursery)."""
        self._nursery = None

    async def __aenter__(self) -> S3Store:
        """``async with S3Store(...) as store``: probes run in the block; the client closes at its end."""
        self._background = rpc.Background()
        self.bind(await self._background.__aenter__())
        return self

    async def __aexit__(self, *exc_info) -> None:
        background, self._background = self._background, None
        await self.release()
        try:
            if background is not None:
                await background.__aexit__(*exc_info)
        finally:
            await self.aclose()

    def _owner_nursery(self) -> trio.Nursery | None:
        return self._nursery

    def _key(self, chunk_id: int, index: int) -> str:
        return f"{self.s3.prefix}{chunk_id:016x}.{index}"

    # ------------------------------------------------------------- calls

    async def _call(self, what: str, fn, *args, missing_ok: bool = False, bucket_call: bool = False,
                    read: bool = False):
        """Run a blocking boto3 call in a worker thread, with errors mapped and health kept. A
        ``read`` fails at once while the store is slow, and may be cancelled (its thread abandoned)."""
        await self._admit(read=read)
        try:
            result = await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=read)
        except (ShardMissing, ShardCorrupt):
            self._mark_up()
            raise
        except Exception as exc:
            kind, message = _classify(exc)
            if kind == "missing" and bucket_call:  # a HEAD of the bucket: 404 without a code
                kind, message = "refused", "the bucket does not exist"
            if kind == "missing":
                self._mark_up()
                if missing_ok:
                    return None
                raise ShardMissing(f"{self.s3.where}: {what}: no such object") from None
            if kind == "refused":
                # The store answered: it is up, but this bucket/credential will not work until fixed.
                self._mark_down(message)
                raise PeerUnavailable(f"{self.s3.where}: {message}") from None
            self._mark_down(f"{what}: {message}")
            raise PeerUnavailable(f"{self.s3.where}: {what}: {message}") from None
        self._mark_up()
        return result

    async def _probe(self) -> str | None:
        def head() -> None:
            self.client.head_bucket(Bucket=self.s3.bucket)
        try:  # (not behind self.limiter: abandoned reads of a stuck store may hold all of it)
            await trio.to_thread.run_sync(head, abandon_on_cancel=True)
        except Exception as exc:
            kind, message = _classify(exc)
            return "the bucket does not exist" if kind == "missing" else message
        return None

    # ------------------------------------------------------------- ShardStore

    async def put(self, chunk_id: int, index: int, payload: bytes | memoryview) -> None:
        body = encode_header(chunk_id, index, payload) + bytes(payload)
        await self._call("put", lambda: self.client.put_object(Bucket=self.s3.bucket, Key=self._key(chunk_id, index),
                                                               Body=body))
        with self._headers_lock:
            self._headers.pop((chunk_id, index), None)

    async def get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        await self._call("get", self._get_into, chunk_id, index, offset, length, out, read=True)

    def _get_into(self, chunk_id: int, index: int, offset: int, length: int, out: memoryview) -> None:
        key = self._key(chunk_id, index)
        with self._headers_lock:
            header = self._headers.get((chunk_id, index))
        if length == 0:
            return
        if header is None:
            # One request for the header and everything up to the end of the range -- or, when
            # the range starts deep inside the shard, the header alone first.
            end = _HEAD_GUESS + (-(-(offset + length) // BLOCK)) * BLOCK
            first = self._range(key, 0, end if offset < 4 * BLOCK else _HEAD_GUESS)
            header = parse_header(first, key, chunk_id, index, lambda a, n: self._range(key, a, a + n))
            self._keep_header(chunk_id, index, header)
            size, block, sums, data_off = header
            _check_range(key, offset, length, size)
            lo, hi = offset // block * block, min(size, -(-(offset + length) // block) * block)
            if data_off + hi <= len(first):
                span = memoryview(first)[data_off + lo:data_off + hi]
            else:
                span = memoryview(self._range(key, data_off + lo, data_off + hi))
        else:
            size, block, sums, data_off = header
            _check_range(key, offset, length, size)
            lo, hi = offset // block * block, min(size, -(-(offset + length) // block) * block)
            span = memoryview(self._range(key, data_off + lo, data_off + hi))
        if len(span) != hi - lo:
            raise ShardCorrupt(f"{key}: short object")
        for b in range(lo // block, -(-hi // block)):
            a = b * block - lo
            if xxhash.xxh3_64_intdigest(span[a:a + block]) != sums[b]:
                with self._headers_lock:
                    self._headers.pop((chunk_id, index), None)
                raise ShardCorrupt(f"{key}: block {b} checksum mismatch")
        out[:length] = span[offset - lo:offset - lo + length]

    def _range(self, key: str, start: int, stop: int) -> bytes:
        resp = self.client.get_object(Bucket=self.s3.bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
        return resp["Body"].read()

    def _keep_header(self, chunk_id: int, index: int, header) -> None:
        with self._headers_lock:
            self._headers[(chunk_id, index)] = header
            while len(self._headers) > _HEADERS_KEPT:
                self._headers.popitem(last=False)

    async def verify(self, chunk_id: int, index: int, checksum: int) -> str:
        def whole() -> str:
            key = self._key(chunk_id, index)
            data = self.client.get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
            try:
                size, block, sums, data_off = parse_header(data, key, chunk_id, index, None)
            except ShardCorrupt:
                return "corrupt"
            payload = memoryview(data)[data_off:]
            if len(payload) != size or xxhash.xxh3_64_intdigest(payload) != checksum:
                return "corrupt"
            if any(xxhash.xxh3_64_intdigest(payload[b * block:(b + 1) * block]) != s for b, s in enumerate(sums)):
                return "corrupt"
            return "ok"
        try:
            result = await self._call("verify", whole, missing_ok=True)
        except PeerUnavailable:
            return "unreachable"
        return "missing" if result is None else result

    async def delete(self, chunk_id: int, index: int) -> None:
        await self._call("delete", lambda: self.client.delete_object(Bucket=self.s3.bucket,
                                                                     Key=self._key(chunk_id, index)))
        with self._headers_lock:
            self._headers.pop((chunk_id, index), None)

    async def sync(self) -> None:
        return None  # an acknowledged PUT is durable

    async def claim(self, lake_id: str, *, dry: bool = False) -> None:
        """Like a peer server's claim: the bucket prefix holds one lake's shards, named in
        ``PREFIX/lake-owner.json``; another lake's -> :class:`ForeignLake`; none yet -> ours
        (unless ``dry``). Checked when a lake is formatted or opened, not at every put."""
        key = f"{self.s3.prefix}{OWNER_FILE}"

        def read_owner() -> str | None:
            try:
                body = self.client.get_object(Bucket=self.s3.bucket, Key=key)["Body"].read()
            except Exception as exc:
                if _classify(exc)[0] == "missing":
                    return None
                raise
            try:
                return str(json.loads(body)["lake"])
            except (ValueError, KeyError, TypeError):
                raise PeerUnavailable(f"{self.s3.where}: {OWNER_FILE} is damaged") from None

        owner = await self._call("read the lake owner", read_owner)
        if owner == lake_id:
            return
        if owner is not None:
            raise ForeignLake(f"{self.s3.where} holds the shards of another lake ({owner})")
        if not dry:
            body = json.dumps({"lake": lake_id}).encode() + b"\n"
            await self._call("record the lake owner",
                             lambda: self.client.put_object(Bucket=self.s3.bucket, Key=key, Body=body))

    async def capacity(self) -> tuple[int, int]:
        if self.s3.capacity is not None:
            return self.s3.capacity, self.s3.capacity  # what the operator allows; used space not tracked
        return _UNBOUNDED, _UNBOUNDED

    async def stat(self) -> dict:
        """Check that the bucket is there and the credentials may use it (``peer add``, ``status``)."""
        await self._call("check the bucket", lambda: self.client.head_bucket(Bucket=self.s3.bucket),
                         bucket_call=True)
        total, avail = await self.capacity()
        return {"id": f"s3:{self.s3.bucket}/{self.s3.prefix}", "zone": "", "total": total, "avail": avail}

    async def list(self, after: tuple[int, int] = (-1, -1), limit: int = 1000) -> list[tuple[int, int, int]]:
        def page() -> list[tuple[int, int, int]]:
            if after != (-1, -1):
                listing = self.client.list_objects_v2(Bucket=self.s3.bucket, Prefix=self.s3.prefix, MaxKeys=limit,
                                                      StartAfter=self._key(*after))
            else:
                listing = self.client.list_objects_v2(Bucket=self.s3.bucket, Prefix=self.s3.prefix, MaxKeys=limit)
            rows = []
            for obj in listing.get("Contents", []):
                name = obj["Key"][len(self.s3.prefix):]
                chunk, _, index = name.partition(".")
                try:
                    rows.append((int(chunk, 16), int(index), int(obj["Size"])))
                except ValueError:
                    continue  # not one of ours
            return rows
        return await self._call("list", page)

    async def aclose(self) -> None:
        self.client.close()


def _check_range(key: str, offset: int, length: int, size: int) -> None:
    if offset < 0 or offset + length > size:
        raise ShardCorrupt(f"{key}: range {offset}+{length} outside shard of {size}")


def _classify(exc: Exception) -> tuple[str, str]:
    """('missing' | 'refused' | 'unreachable', a message that names the cause) for a boto3 error."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "404") or (status == 404 and code not in ("NoSuchBucket",)):
            return "missing", "no such object"
        if code == "NoSuchBucket":
            return "refused", "the bucket does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
                    "ExpiredToken") or status == 403:
            return "refused", f"credentials refused ({code or status}): check AWS_ACCESS_KEY_ID/" \
                              "AWS_SECRET_ACCESS_KEY or the profile"
        return "unreachable", f"{code or status}: {err.get('Message', '')}".strip()
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return "refused", "no credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
    if isinstance(exc, EndpointConnectionError):
        return "unreachable", f"cannot connect to the endpoint ({exc})"
    return "unreachable", f"{type(exc).__name__}: {exc}"
