"""The configuration file: TOML, one table per command, every key a command-line option.

Where a value comes from, first match wins:

1. the command line;
2. the environment: ``LAKEFS_FUSE_<COMMAND>_<OPTION>``, the option as it is typed (``--cache-size``:
   ``LAKEFS_FUSE_MOUNT_CACHE_SIZE=20G``, ``--data``: ``LAKEFS_FUSE_STATUS_DATA``, ``--json``:
   ``LAKEFS_FUSE_LS_JSON=1``, ``peer serve --listen``: ``LAKEFS_FUSE_PEER_SERVE_LISTEN``). The names are
   given to the options by :func:`name_environment`; any other ``LAKEFS_FUSE_*`` variable gets a
   one-line warning (a misspelt name would otherwise be ignored without a word);
3. the file: ``--config PATH``, else ``$LAKEFS_FUSE_CONFIG``, else ``/etc/lakefs-fuse/config.toml`` if
   it exists. Tables are named after commands (``[mount]``, ``[peer.serve]``, ``[meta.serve]``,
   ``[status]``...) and keys after their long options (``cache-size`` or ``cache_size``);
4. the option's default.

A key no command knows, a table that is not a command, or a value of the wrong type is one error
line naming the file, the table and the key. ``lakefs-fuse config example`` prints a file with every
key of every command and its help text (docs/configuration.md is that output).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import click

from ..errors import UserError

DEFAULT_PATH = Path("/etc/lakefs-fuse/config.toml")
#: Options that only make sense on a command line (per invocation), never in a file.
NOT_IN_FILE = {"help", "version", "ready_fd", "foreground", "config"}
#: Variables read by the code itself rather than through an option.
OTHER_VARIABLES = {"LAKEFS_FUSE_CONFIG", "LAKEFS_FUSE_DATA", "LAKEFS_FUSE_RUNTIME", "LAKEFS_FUSE_LOG",
                   "LAKEFS_FUSE_STRICT"}


def config_path(given: Path | None) -> Path | None:
    if given is not None:
        return given
    env = os.environ.get("LAKEFS_FUSE_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_PATH if DEFAULT_PATH.is_file() else None


def load(path: Path, root: click.Group) -> dict:
    """The file as click's ``default_map`` (nested by command), checked against ``root``'s commands."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path}: not valid TOML: {exc}") from None
    return _check(path, data, root, [])


def _check(path: Path, table: dict, group: click.Group, where: list[str]) -> dict:
    out: dict = {}
    for name, value in table.items():
        cmd = group.commands.get(name)
        here = ".".join(where + [name])
        if cmd is None:
            known = ", ".join(sorted(group.commands))
            raise UserError(f"config file {path}: [{here}] is not a command (known here: {known})")
        if not isinstance(value, dict):
            raise UserError(f"config file {path}: {here} must be a table ([{here}])")
        if isinstance(cmd, click.Group):
            out[name] = _check(path, value, cmd, where + [name])
        else:
            out[name] = _options(path, here, value, cmd)
    return out


def _options(path: Path, where: str, values: dict, cmd: click.Command) -> dict:
    params: dict[str, click.Option] = {}  # by long option ("cache-size") and by name ("cache_size")
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name not in NOT_IN_FILE and not p.hidden:
            params[p.name] = p
            for opt in p.opts:
                if opt.startswith("--"):
                    params[opt[2:].replace("-", "_")] = p
    out = {}
    for key, value in values.items():
        param = params.get(key.replace("-", "_"))
        if param is None:
            known = sorted({max(p.opts, key=len).lstrip("-") for p in params.values()})
            raise UserError(f"config file {path}: [{where}] has no option {key!r} (known: {', '.join(known)})")
        if isinstance(value, dict):
            raise UserError(f"config file {path}: [{where}] {key} must be a value, not a table")
        if param.multiple and not isinstance(value, list):
            value = [value]
        if not param.multiple and isinstance(value, list):
            raise UserError(f"config file {path}: [{where}] {key} takes one value, not a list")
        try:  # the option's own type says whether the value fits (a size, a path, a number...)
            param.type_cast_value(click.Context(cmd), value)
        except click.BadParameter as exc:
            raise UserError(f"config file {path}: [{where}] {key}: {exc.message}") from None
        out[param.name] = value
    return out


# ---------------------------------------------------------------------------- environment


def env_name(where: list[str], p: click.Option) -> str:
    """``LAKEFS_FUSE_<COMMAND>_<OPTION>``, the option as the user types it (``--json``: ``JSON``, not the
    parameter's ``as_json``); an option with only a short form (``-o``) by its parameter name."""
    option = max(p.opts, key=len)
    option = option[2:] if option.startswith("--") else p.name
    return "_".join(["LAKEFS_FUSE", *where, option]).upper().replace("-", "_")


def name_environment(root: click.Group) -> set[str]:
    """Give every option of every command its environment variable (a command reachable under two
    names, like ``stat``/``info``, answers to both). Returns every name a variable may have."""
    names: dict[int, tuple[click.Option, list[str]]] = {}
    for where, cmd in _walk(root, []):
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name not in ("help", "version") and not p.hidden:
                names.setdefault(id(p), (p, []))[1].append(env_name(where, p))
    for p, envs in names.values():
        p.envvar = envs if len(envs) > 1 else envs[0]
    return {e for _p, envs in names.values() for e in envs} | OTHER_VARIABLES


def unknown_variables(environ: dict[str, str], known: set[str]) -> str | None:
    """One line about the ``LAKEFS_FUSE_*`` variables that are no setting (None if there are none)."""
    import difflib
    unknown = sorted(v for v in environ if v.startswith("LAKEFS_FUSE_") and v not in known)
    if not unknown:
        return None
    said = []
    tails = {k.removeprefix("LAKEFS_FUSE_"): k for k in known}  # the shared prefix would make all look alike
    for name in unknown:
        close = difflib.get_close_matches(name.removeprefix("LAKEFS_FUSE_"), tails, n=1, cutoff=0.75)
        said.append(name + (f" (did you mean {tails[close[0]]}?)" if close else ""))
    return (f"warning: ignoring {', '.join(said)}: not a lakefs-fuse setting "
            "(LAKEFS_FUSE_<COMMAND>_<OPTION>; 'lakefs-fuse config example' lists them)")


# ---------------------------------------------------------------------------- example file


def example(root: click.Group) -> str:
    """A TOML file with every key of every command, commented out, with the option's help."""
    lines = ["# lakefs-fuse configuration (/etc/lakefs-fuse/config.toml, or --config PATH).",
             "# Every key is an option of the command named by its table; the command line and",
             "# LAKEFS_FUSE_<COMMAND>_<OPTION> environment variables override the file.", ""]
    for where, cmd in _walk(root, []):
        opts = [p for p in cmd.params if isinstance(p, click.Option) and p.name not in NOT_IN_FILE and not p.hidden]
        if not opts:
            continue
        first = (cmd.help or "").strip().splitlines()[0] if cmd.help else ""
        lines.append(f"[{'.'.join(where)}]" + (f"  # {first}" if first else ""))
        for p in opts:
            key = max(p.opts, key=len).lstrip("-")
            env = env_name(where, p)
            for text in _wrap(p.help or ""):
                lines.append(f"# {text}")
            lines.append(f"# env: {env}")
            lines.append(f"# {key} = {_toml_value(p)}")
        lines.append("")
    return "\n".join(lines)


def _walk(group: click.Group, where: list[str]):
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, where + [name])
        else:
            yield where + [name], cmd


def _wrap(text: str, width: int = 96) -> list[str]:
    words, out, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return out + ([line] if line else [])


def _toml_value(p: click.Option) -> str:
    default = p.default
    if p.multiple:
        items = list(default) if isinstance(default, (list, tuple)) and default else ['"..."']
        return "[" + ", ".join(v if v == '"..."' else _scalar(v) for v in items) + "]"
    if isinstance(default, (bool, int, float, str)):
        return _scalar(default)
    return "false" if p.is_flag else '"..."'  # no default (unset, or computed at run time)


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
