"""The in-process Python client (issue 13) with no mount: bad input, closed lakes and files,
interpreter exit without ``close()``, and a full disk (ENOSPC reaches the writer; nothing accepted
is lost).

The comparisons with a live mount: ``test_client.py``; forks and cluster lakes:
``test_client_shared.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from lakefs_fuse.client import connect

from conftest import REPO, cli

MiB = 1 << 20


# ------------------------------------------------------------------------ bad input


@pytest.mark.timeout(120)
def test_bad_input_gives_python_errors(tmp_path):
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)

    with pytest.raises(ValueError):
        connect()
    with pytest.raises(ValueError):
        connect(data=data, meta="127.0.0.1:1")
    with pytest.raises(ValueError):
        connect(meta="127.0.0.1:1")  # no secret_file
    for where, err, words in ((tmp_path, errno.EINVAL, "not a lakefs-fuse lake"),
                              (tmp_path / "missing", errno.ENOENT, "does not exist")):
        with pytest.raises(OSError) as exc:
            connect(data=where)
        assert exc.value.errno == err and words in str(exc.value), exc.value
        assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no inner traceback

    client = connect(data=data)
    try:
        client.write_bytes("f", b"bytes")
        # A NUL byte: ValueError, as os and the builtin open give, for every call.
        for call in (lambda: client.open("f\0x", "rb"), lambda: client.stat("a\0"),
                     lambda: client.listdir(b"d\0"), lambda: client.mkdir("n\0"),
                     lambda: client.rename("f", "g\0"), lambda: client.remove("f\0"),
                     lambda: client.read_bytes("f\0"), lambda: client.symlink("t\0", "l"),
                     lambda: client.makedirs("m/\0")):
            with pytest.raises(ValueError, match="null byte"):
                call()
        assert not client.exists("f\0") and not os.path.exists(data / "lake.json\0")  # as os.path
        for call in (lambda: os.stat("a\0"), lambda: open("f\0x", "rb")):  # noqa: SIM115  # what the client mirrors
            with pytest.raises(ValueError, match="null byte"):
                call()
        with pytest.raises(ValueError):
            client.open("f", "rw")
        with pytest.raises(ValueError):
            client.open("f", "rb", encoding="utf-8")

        f = client.open("f", "rb")
        assert f.read(2) == b"by"
        f.close()
        with pytest.raises(ValueError):
            f.read()
        raw = client.open("f", "rb", buffering=0)
        raw.close()
        with pytest.raises(ValueError):
            raw.readinto(bytearray(4))
        w = client.open("g", "wb")
        w.write(b"x")
        w.close()
        with pytest.raises(ValueError):
            w.write(b"y")
        open_file = client.open("f", "rb")
    finally:
        client.close()
    client.close()  # twice is fine
    for call in (lambda: client.stat("f"), lambda: client.listdir(""), lambda: client.open("f", "rb"),
                 lambda: client.read_bytes("f"), lambda: client.write_bytes("h", b"")):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError):
        open_file.read()  # a file of a closed lake
    open_file.close()
    with connect(data=data) as again:
        assert again.read_bytes("f") == b"bytes" and again.read_bytes("g") == b"x"


# ---------------------------------------------------------------- exit, close errors


@pytest.mark.timeout(120)
def test_read_many_is_read_bytes_for_a_batch(tmp_path):
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)
    files = {f"b/{i}": os.urandom(i * 7919) for i in range(20)}  # 0 B up to ~150 KB
    with connect(data=data) as lake:
        lake.mkdir("b")
        for name, blob in files.items():
            lake.write_bytes(name, blob)
        names = list(files)[::-1]
        assert lake.read_many(names) == [files[n] for n in names] == [lake.read_bytes(n) for n in names]
        assert lake.read_many([]) == []
        with pytest.raises(FileNotFoundError) as exc:
            lake.read_many(["b/1", "b/missing", "b/2"])
        assert exc.value.filename == "b/missing"
        with pytest.raises(IsADirectoryError):
            lake.read_many(["b"])


@pytest.mark.timeout(120)
def test_interpreter_exit_without_close_keeps_the_files(tmp_path):
    data = tmp_path / "data"
    cli("format", "--data", str(data), check=True)
    # pack_delay: a closed file waits in memory to share a chunk; only the client's close --
    # run at interpreter exit -- seals it into the lake.
    code = (
        "import sys\n"
        "from lakefs_fuse.client import connect\n"
        "lake = connect(data=sys.argv[1], pack_delay=60)\n"
        "with lake.open('buffered', 'wb') as f:\n"
        "    f.write(b'sealed at exit')\n"
        "lake.makedirs('d')\n"
        "lake.write_bytes('d/big', bytes(range(256)) * 20000)\n"
        "left_open = lake.open('left open', 'wb')\n"  # buffered in the file object, never closed
        "left_open.write(b'flushed at exit')\n"
        "text = lake.open('left open.txt', 'w')\n"
        "text.write('text too')\n"
        "print('wrote', flush=True)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, timeout=90,
                         cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "wrote", res.stderr
    with connect(data=data) as client:
        assert client.read_bytes("buffered") == b"sealed at exit"
        assert client.read_bytes("d/big") == bytes(range(256)) * 20000
        assert client.read_bytes("left open") == b"flushed at exit"  # as a local file's would be
        assert client.read_bytes("left open.txt") == b"text too"


@pytest.mark.timeout(240)
def test_full_disk_fails_a_write_or_close_and_keeps_what_was_accepted(small_disk):
    data = small_disk / "data"
    cli("format", "--data", str(data), check=True)
    accepted: dict[str, bytes] = {}
    refused: list[int | None] = []
    with connect(data=data) as client:
        for i in range(120):  # 120 MiB offered to a 64 MiB disk
            blob = os.urandom(MiB)
            try:
                with client.open(f"f{i:03d}", "wb") as f:
                    f.write(blob)
            except OSError as exc:
                refused.append(exc.errno)
                continue
            accepted[f"f{i:03d}"] = blob
        assert refused and set(refused) == {errno.ENOSPC}, refused
        assert len(accepted) >= 20, f"only {len(accepted)} files fit"
    with connect(data=data) as client:
        for name, blob in accepted.items():
            assert client.read_bytes(name) == blob, name


def test_a_failed_shutdown_reaches_close_as_an_oserror():
    """The lake's shutdown (sealing what was buffered) runs in a nursery, which wraps its error in
    an exception group: close() still raises the plain OSError of the lake error inside."""
    from lakefs_fuse import errors as E
    from lakefs_fuse.client.lake import lake_error_of

    inner = E.NoSpace("no peer takes the shard")
    assert lake_error_of(BaseExceptionGroup("shutdown", [ValueError("x"), ExceptionGroup("seal", [inner])])) is inner
    assert lake_error_of(inner) is inner
    assert lake_error_of(ExceptionGroup("other", [ValueError("x")])) is None
