"""What several commands share: the lake options and opening the lake they name, the live-view
options, running a coroutine over an opened lake, logging setup and JSON output.

``--data DIR`` names an embedded lake (default: :func:`~lakefs_fuse.config.default_data_dir`);
``--meta HOST:PORT,... --secret-file FILE [--tls-ca CA]`` a cluster lake. A command that changes an
embedded lake takes its lock first (:func:`open_lake` with ``change``): it runs only while the
lake is unmounted. A cluster lake's changes are compare-and-set commands, so they run beside its
mounts.

A command opens its lake in two steps: :func:`open_lake` checks the options and opens an
embedded lake at once (a refusal comes first, as one line); :func:`run_on` enters the lake in the
command's ``trio.run`` -- a cluster lake is reached there (``Lake.connect``) -- runs the command's
coroutine on it and closes it. The lake's connections live in that ``async with``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import trio

from ..config import default_data_dir, parse_addresses
from ..errors import UserError

if TYPE_CHECKING:
    from ..lake.lake import Lake

T = TypeVar("T")


def lake_options(fn):
    """--data (embedded lake) or --meta/--secret-file/--tls-ca (cluster lake)."""
    for opt in reversed([
        click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
                     help="The embedded lake's data directory."),
        click.option("--meta", "meta", default=None, metavar="HOST:PORT,...",
                     help="A cluster lake: its metadata servers (instead of --data)."),
        click.option("--secret-file", type=click.Path(path_type=Path), default=None,
                     help="The cluster secret (with --meta)."),
        click.option("--tls-ca", type=click.Path(path_type=Path), default=None,
                     help="CA to trust for TLS to peer servers (with --meta)."),
    ]):
        fn = opt(fn)
    return fn


def view_options(fn):
    """MOUNTPOINT, --interval, --once and --json of the live views (``stats``, ``top``)."""
    fn = click.option("--json", "as_json", is_flag=True, help="One sample as JSON (implies --once).")(fn)
    fn = click.option("--once", is_flag=True, help="Show one sample and exit.")(fn)
    fn = click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
                      help="Seconds between samples; rates are over this interval.")(fn)
    return click.argument("mountpoint", type=click.Path(path_type=Path, exists=True, file_okay=False))(fn)


def json_option(help_text: str = "Machine-readable report."):
    """--json (the parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def open_lake(data_dir: Path | None, meta: str | None, secret_file: Path | None, tls_ca: Path | None, *,
              change: str | None = None) -> AbstractAsyncContextManager[Lake]:
    """The lake the options name, for :func:`run_on` to enter (an ``async with`` giving a
    :class:`~lakefs_fuse.lake.lake.Lake`). ``change`` (a verb) takes an embedded lake's lock first:
    an embedded lake is changed only while unmounted; a cluster lake's commands are
    compare-and-set, so they run beside its mounts."""
    from ..lake.lake import Lake, in_use
    if meta is not None:
        if data_dir is not None:
            raise UserError("give either --data or --meta, not both")
        return Lake.connect(parse_addresses(meta), secret_file, tls_ca=tls_ca)
    data_dir = data_dir or default_data_dir()
    if change is None:
        return Lake.open(data_dir, read_only=True).closing()
    if in_use(data_dir):
        raise UserError(f"{data_dir} is mounted; unmount it to {change}")
    return Lake.open(data_dir, lock=True).closing()


def run_on(lake: AbstractAsyncContextManager[Lake], run: Callable[[Lake], Awaitable[T]]) -> T:
    """``trio.run``: enter ``lake`` (from :func:`open_lake` or ``admin.inspect.open_path``), return
    ``await run(the lake)``; the lake is closed whatever happened. An error from ``run`` comes out
    as it was raised (one UserError line, not a group)."""
    async def main() -> Any:
        async with lake as opened:
            return await run(opened)
    return trio.run(main)


def echo_json(value) -> None:
    click.echo(json.dumps(value, indent=1))


def log_setup() -> None:
    """Log to stderr at $LAKEFS_FUSE_LOG (default INFO): the daemons and servers."""
    logging.basicConfig(level=os.environ.get("LAKEFS_FUSE_LOG", "INFO"),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
