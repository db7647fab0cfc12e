"""The ``lakefs-fuse`` command: the root group, error handling, the configuration file, and the
commands of every group module, registered here.

Every user mistake is one line on stderr and exit status 1 (:class:`UserError`; a
:class:`LakeError` that escapes is one line too); a bug is a traceback and status 2.

The commands live one group per module, each reading parse -> build a config -> call one function
of the layers below -> print:

- :mod:`.lake_cmds`     format, mount, umount, status, install-mount-helper
- :mod:`.inspect_cmds`  stat (info), ls
- :mod:`.maint_cmds`    scrub, repair, rebalance, fsck, gc, dump, load, import, restripe
- :mod:`.observe_cmds`  stats, top, warmup, bench
- :mod:`.peer_cmds`     peer serve/add/remove/weight/list
- :mod:`.meta_cmds`     meta serve/add/remove/rebuild/status
- here                  config example/check

:mod:`.options` holds what they share; :mod:`.config_file` reads the configuration file and names
every option's environment variable (``LAKEFS_FUSE_<COMMAND>_<OPTION>``) once all are registered.
The CLI imports ``admin``, ``lake``, ``mount`` and the base layer; never ``meta`` or ``chunks``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import LakeError, UserError
from . import config_file as cliconfig
from . import inspect_cmds, lake_cmds, maint_cmds, meta_cmds, observe_cmds, peer_cmds


class LakeGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"lakefs-fuse: {exc}", err=True)
            sys.exit(exc.exit_code)
        except LakeError as exc:
            click.echo(f"lakefs-fuse: {str(exc) or os.strerror(exc.errno)}", err=True)  # never an empty line
            sys.exit(1)


@click.group(cls=LakeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakefs-fuse")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Configuration file (TOML; default $LAKEFS_FUSE_CONFIG, else /etc/lakefs-fuse/config.toml "
                   "if present). See 'lakefs-fuse config example'.")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None) -> None:
    """lakefs-fuse: a POSIX filesystem for training data, on erasure-coded chunks.

    Every option can also come from the environment (LAKEFS_FUSE_<COMMAND>_<OPTION>, the option as
    typed: LAKEFS_FUSE_MOUNT_CACHE_SIZE=20G, LAKEFS_FUSE_STATUS_DATA=DIR, LAKEFS_FUSE_LS_JSON=1) or from
    the configuration file; the command line wins.
    """
    warning = cliconfig.unknown_variables(dict(os.environ), ENVIRONMENT)
    if warning:
        click.echo(f"lakefs-fuse: {warning}", err=True)
    path = cliconfig.config_path(config_file)
    if path is not None:
        ctx.default_map = cliconfig.load(path, main)


@main.group("config")
def config_group() -> None:
    """The configuration file."""


@config_group.command("example")
def config_example() -> None:
    """Print a configuration file with every key of every command and its meaning (all commented out)."""
    click.echo(cliconfig.example(main), nl=False)


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def config_check(path: Path) -> None:
    """Check a configuration file: every table a command, every key one of its options."""
    loaded = cliconfig.load(path, main)
    n = sum(len(v) if not any(isinstance(x, dict) for x in v.values()) else sum(len(y) for y in v.values())
            for v in loaded.values())
    click.echo(f"{path}: ok ({n} settings)")


for _module in (lake_cmds, inspect_cmds, maint_cmds, observe_cmds):
    for _command in _module.COMMANDS:
        main.add_command(_command)
for _name, _command in inspect_cmds.ALIASES.items():
    main.add_command(_command, _name)
main.add_command(peer_cmds.peer)
main.add_command(meta_cmds.meta_group)

#: Every LAKEFS_FUSE_* variable that means something (the options' names are given here, once every
#: command is registered).
ENVIRONMENT = cliconfig.name_environment(main)


if __name__ == "__main__":
    main()
