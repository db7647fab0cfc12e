"""Layers import downward only: cli -> admin -> mount -> lake -> {meta, chunks} -> base.

meta and chunks never know each other; only mount/ sees pyfuse3; the package root holds the base
layer (errors, config, wire, metrics, private) and the public torch helpers, which import no layer.
The CLI reaches metadata and chunks only through admin/, lake/ and mount/, never meta/ or chunks/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "lakefs_fuse"

LAYERS = ("meta", "chunks", "lake", "mount", "admin", "cli")

FORBIDDEN = {
    "": set(LAYERS),                                   # base: errors, config, wire, metrics, torch
    "meta": {"chunks", "lake", "mount", "admin", "cli"},
    "chunks": {"meta", "lake", "mount", "admin", "cli"},
    "lake": {"mount", "admin", "cli"},
    "mount": {"admin", "cli"},
    "admin": {"cli"},
    "cli": {"meta", "chunks"},                         # admin, lake, mount and base only
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PKG).parts
    out = set()
    for node in ast.walk(tree):
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


def test_layer_contract():
    bad = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).parts
        layer = rel[0] if len(rel) > 1 else ""
        mods = imports_of(path)
        for m in mods:
            top = m.split(".")[0]
            if m.startswith("lakefs_fuse."):
                top = m.split(".")[1]
            if top in FORBIDDEN.get(layer, set()):
                bad.append(f"{path.relative_to(PKG)} imports {m}")
            if top == "pyfuse3" and layer != "mount":
                bad.append(f"{path.relative_to(PKG)} imports pyfuse3 outside mount/")
    assert not bad, bad


@pytest.mark.parametrize("layer, source", [("chunks", "from ..meta import schema\n"),
                                           ("cli", "from lakefs_fuse.chunks.store import ShardDir\n")])
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
