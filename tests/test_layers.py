"""Layers import downward only: cli -> admin -> mount -> lake -> {meta, chunks} -> base, and
client (the in-process Python client) -> mount beside admin.

meta and chunks never know each other; only mount/ sees pyfuse3 (the client must work where
there is no FUSE); the package root holds the base layer (errors, config, wire, metrics, private)
and the public facades: ``lakefs_fuse.connect`` and the torch helpers reach the client only
lazily, from inside a function, so importing them loads no layer. The CLI reaches metadata and
chunks only through admin/, lake/ and mount/, never meta/ or chunks/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lakefs_fuse"

LAYERS = ("meta", "chunks", "lake", "mount", "admin", "client", "cli")

FORBIDDEN = {
    "": set(LAYERS),                                   # base: errors, config, wire, metrics, torch
    "meta": {"chunks", "lake", "mount", "admin", "client", "cli"},
    "chunks": {"meta", "lake", "mount", "admin", "client", "cli"},
    "lake": {"mount", "admin", "client", "cli"},
    "mount": {"admin", "client", "cli"},
    "admin": {"client", "cli"},
    "client": {"admin", "cli"},                        # mount (the VFS), lake, meta and base
    "cli": {"meta", "chunks", "client"},               # admin, lake, mount and base only
}
#: Base-level modules that may load a layer, but only inside a function (on first use).
LAZY_FACADES = {"__init__.py": {"client"}, "torch.py": {"client"}}


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).parts
    out = set()
    nodes = ast.walk(tree) if not top_level_only else _outside_functions(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-1])[: len(rel) - node.level]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.add(mod.split(".")[0] if mod else "")
                if node.module is None:
                    out.update(a.name for a in node.names)
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _outside_functions(tree: ast.AST):
    """The nodes of ``tree`` that run at import time (not inside a function body)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(c for c in ast.iter_child_nodes(node)
                     if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef))


def _top(m: str) -> str:
    return m.split(".")[1] if m.startswith("lakefs_fuse.") else m.split(".")[0]


def test_layer_contract():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        layer = rel[0] if len(rel) > 1 else ""
        mods = imports_of(path)
        lazy = LAZY_FACADES.get(path.name, set()) if layer == "" else set()
        eager = {_top(m) for m in imports_of(path, top_level_only=True)} if lazy else set()
        for m in mods:
            top = _top(m)
            if top in FORBIDDEN.get(layer, set()) and (top not in lazy or top in eager):
                bad.append(f"{path.relative_to(PKG)} imports {m}")
            if top == "pyfuse3" and layer != "mount":
                bad.append(f"{path.relative_to(PKG)} imports pyfuse3 outside mount/")
    assert not bad, bad


@pytest.mark.parametrize("layer, source", [("chunks", "from ..meta import schema\n"),
                                           ("cli", "from lakefs_fuse.chunks.store import ShardDir\n"),
                                           ("mount", "from ..client import connect\n"),
                                           ("", "from .client import connect\n")])
def test_contract_catches_a_violation(layer, source):
    fake = PKG / layer / "_layer_probe.py"
    fake.write_text(source)
    try:
        try:
            test_layer_contract()
        except AssertionError as exc:
            assert "_layer_probe" in str(exc)
        else:
            raise AssertionError(f"layer check did not notice {layer} importing {source.split()[1]}")
    finally:
        fake.unlink()
