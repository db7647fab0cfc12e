"""``lakefs://`` for fsspec: pandas, pyarrow, datasets, Ray and PyTorch code that takes URLs.

Registered through the ``fsspec.specs`` entry point (pyproject), so after installing lakefs-fuse::

    import pandas as pd
    df = pd.read_parquet("lakefs://tables/train.parquet", storage_options={"data": "/srv/lake"})

    import fsspec
    fs = fsspec.filesystem("lakefs", meta="10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000",
                           secret_file="/etc/lakefs/secret")
    fs.ls("images/train")

The storage options are :func:`~lakefs_fuse.client.connect`'s (``data``, ``meta``, ``secret_file``,
``read_only``, caches, ...). Without ``data`` or ``meta`` the lake is the CLI's default one
(``$LAKEFS_FUSE_DATA``, else ``~/.local/share/lakefs-fuse/lake``); ``$LAKEFS_FUSE_META`` and
``$LAKEFS_FUSE_SECRET`` name a cluster lake instead. A URL's path is the path inside the lake:
``lakefs://a/b.csv`` and ``lakefs:///a/b.csv`` are the same file.

The filesystem opens its :class:`~.lake.LakeClient` on first use; instances are cached and pickled
by their options (fsspec's rule), so a DataLoader or Ray worker reconnects in its own process.

Imports fsspec and the client's own modules.
"""

from __future__ import annotations

import os
import stat as st
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractFileSystem

from .lake import LakeClient, connect


def _default_lake() -> dict[str, Any]:
    meta = os.environ.get("LAKEFS_FUSE_META")
    if meta:
        return {"meta": meta, "secret_file": os.environ.get("LAKEFS_FUSE_SECRET")}
    data = os.environ.get("LAKEFS_FUSE_DATA") or str(Path.home() / ".local/share/lakefs-fuse/lake")
    return {"data": data}


class LakeFileSystem(AbstractFileSystem):
    """An fsspec filesystem over one lake (the in-process client; no mount needed)."""

    protocol = ("lakefs",)
    root_marker = ""

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self._options = options or _default_lake()
        self._client: LakeClient | None = None

    @property
    def lake(self) -> LakeClient:
        if self._client is None:
            self._client = connect(**self._options)
        return self._client

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path)
        if path.startswith("lakefs://"):
            path = path[len("lakefs://"):]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"lakefs://{name.lstrip('/')}"

    # ------------------------------------------------------------------ queries

    def _info_of(self, path: str, s: os.stat_result) -> dict[str, Any]:
        kind = "directory" if st.S_ISDIR(s.st_mode) else "file" if st.S_ISREG(s.st_mode) else "other"
        return {"name": path, "size": s.st_size if kind == "file" else 0, "type": kind,
                "mode": s.st_mode, "uid": s.st_uid, "gid": s.st_gid, "ino": s.st_ino, "nlink": s.st_nlink,
                "mtime": s.st_mtime, "created": s.st_ctime, "islink": st.S_ISLNK(s.st_mode)}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._info_of(path, self.lake.stat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        s = self.lake.stat(path)
        if not st.S_ISDIR(s.st_mode):
            entries = [self._info_of(path, s)]
        else:
            entries = [self._info_of(e.path, e.stat(follow_symlinks=False)) for e in self.lake.scandir(path)]
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def exists(self, path: str, **kwargs: Any) -> bool:
        return bool(self.lake.exists(self._strip_protocol(path)))

    def modified(self, path: str) -> Any:
        import datetime
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def created(self, path: str) -> Any:
        import datetime
        return datetime.datetime.fromtimestamp(self.info(path)["created"], tz=datetime.UTC)

    # -------------------------------------------------------------------- files

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "w" in mode or "a" in mode or "x" in mode:
            parent = path.rpartition("/")[0]
            if parent and self.auto_mkdir:
                self.lake.makedirs(parent, exist_ok=True)
        buffering = block_size if isinstance(block_size, int) and block_size > 0 else -1
        return self.lake.open(path, mode, buffering=buffering)

    auto_mkdir = True

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if start is None and end is None:
            return bytes(self.lake.read_bytes(path))
        return bytes(super().cat_file(path, start=start, end=end, **kwargs))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        with self._open(path, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        with self.lake.open(src, "rb") as fin, self._open(dst, "wb") as fout:
            while True:
                block = fin.read(4 << 20)
                if not block:
                    break
                fout.write(block)

    # ------------------------------------------------------------------ changes

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            self.lake.makedirs(path, exist_ok=True)
        else:
            self.lake.mkdir(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.lake.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.lake.rmdir(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.lake.isdir(path):
            self.lake.rmdir(path)
        else:
            self.lake.remove(path)

    def rm_file(self, path: str) -> None:
        """A file, or (fsspec's recursive ``rm`` hands it the directories too, deepest first) an
        empty directory."""
        self._rm(path)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: Any = None, **kwargs: Any) -> None:
        """A rename inside the lake (atomic, any size, directories too)."""
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.lake.isdir(dst) and not self.lake.isdir(src):
            dst = f"{dst}/{src.rpartition('/')[2]}"
        self.lake.rename(src, dst)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if truncate or not self.lake.exists(path):
            with self._open(path, "wb"):
                pass
        else:
            raise NotImplementedError("touch without truncate (updating the mtime) is not supported")

    def close(self) -> None:
        """Close the lake this filesystem opened (fsspec keeps instances; this one reopens on use)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
