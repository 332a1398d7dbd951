"""What the plugin's code takes from Qt and QGIS, read from its source (ast), for the Qt 6 / QGIS 4 checks.

Only the code QGIS loads is scanned: the `rsgen_qgis` package without `training/` (which never runs in QGIS).
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "rsgen_qgis")
SKIP_DIRS = {"training", "__pycache__"}
QT_PREFIX = "qgis.PyQt"
QGIS_MODULES = ("qgis.core", "qgis.gui", "qgis.analysis")


def plugin_sources() -> List[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return out


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


@dataclass(frozen=True)
class Imported:
    module: str        # "qgis.PyQt.QtWidgets", "qgis.core", ...
    name: str          # the name in that module
    fallback: bool     # imported in an `except ImportError:` branch (a Qt 5 fallback)
    line: int


@dataclass(frozen=True)
class Chain:
    """`Root.a.b` in the source, Root a name imported from Qt or QGIS."""
    path: str
    line: int
    root: str          # the local name
    attrs: Tuple[str, ...]

    @property
    def text(self) -> str:
        return ".".join((self.root,) + self.attrs)


def is_qt_or_qgis(module: str) -> bool:
    return module.startswith(QT_PREFIX) or module in QGIS_MODULES


def parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _fallback_imports(tree: ast.Module) -> set:
    """ImportFrom nodes that sit in an `except ImportError` handler."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                for sub in ast.walk(handler):
                    if isinstance(sub, ast.ImportFrom):
                        ids.add(id(sub))
    return ids


def imports(tree: ast.Module) -> Dict[str, List[Imported]]:
    """Local name -> where it comes from (a name may have a Qt 6 import and a Qt 5 fallback)."""
    fallback = _fallback_imports(tree)
    out: Dict[str, List[Imported]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and is_qt_or_qgis(node.module):
            for alias in node.names:
                out.setdefault(alias.asname or alias.name, []).append(
                    Imported(node.module, alias.name, id(node) in fallback, node.lineno))
    # simple aliases (`Num = QgsProcessingParameterNumber`): their chains are the imported name's chains
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Name) and node.value.id in out):
            out.setdefault(node.targets[0].id, list(out[node.value.id]))
    return out


def chains(path: str, tree: ast.Module, names: Dict[str, List[Imported]]) -> Iterator[Chain]:
    """The longest attribute chains rooted at an imported Qt/QGIS name (`Qt.AlignmentFlag.AlignLeft`)."""
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        attrs, cur = [], node
        while isinstance(cur, ast.Attribute):
            attrs.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name) and cur.id in names:
            yield Chain(rel(path), node.lineno, cur.id, tuple(reversed(attrs)))


def calls_named(tree: ast.Module, attr: str) -> Iterator[int]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            yield node.lineno
