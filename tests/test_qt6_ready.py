"""The plugin loads in QGIS 4 (Qt 6, PyQt6) as well as QGIS 3 (Qt 5), and metadata.txt says so.

QGIS 4 runs PyQt6, where every enum is scoped (`Qt.AlignmentFlag.AlignLeft`, not `Qt.AlignLeft`), `exec_` is
gone, QAction lives in QtGui and QVariant types are QMetaType ones. QGIS 3.22 (what these tests run on) accepts
the scoped spellings too, so the code is written once for both:

- every enum value the plugin names is reached through its enum, and that spelling resolves here;
- no Qt 5-only construct (PyQt5 imports, exec_, QVariant.<type>, QRegExp, qApp, compiled resources);
- every Qt name the plugin imports or spells (`qgis.PyQt.*`) exists in PyQt6 too: checked against a real PyQt6
  in a subprocess (`make test` installs it under the venv, `qt6/`); QGIS's own Qt 6 bindings keep the scoped
  spellings used here (QGIS's pyqt5_to_pyqt6 migration writes the same ones).
"""
import configparser
import enum
import importlib
import json
import os
import subprocess
import sys

import pytest

from tests.qt6_scan import ROOT, calls_named, chains, imports, parse, plugin_sources, rel

QT5_ONLY_NAMES = {"QRegExp": "QRegularExpression", "qApp": "QApplication.instance()",
                  "QDesktopWidget": "QScreen", "resources_rc": "icons loaded by file path"}


def _sources():
    return [(path, parse(path)) for path in plugin_sources()]


def _resolve(module: str, name: str):
    mod = importlib.import_module(module)
    if not hasattr(mod, name):  # a submodule: from qgis.PyQt import sip
        return importlib.import_module(f"{module}.{name}")
    return getattr(mod, name)


def _is_enum_type(obj) -> bool:
    return isinstance(obj, type) and (issubclass(obj, enum.Enum) or type(obj).__name__ == "enumtype")


def _is_enum_member(obj) -> bool:
    return isinstance(obj, enum.Enum) or type(type(obj)).__name__ == "enumtype"


def _scoped_spelling(root: str, member_name: str, value) -> str:
    if isinstance(value, enum.Enum):  # QGIS's own scoped enums: Qgis.TransformDirection.Reverse
        return f"{type(value).__qualname__}.{value.name}"
    return f"{root}.{type(value).__name__}.{member_name}"


def test_the_scan_sees_the_plugin():
    """Guards the checks below against scanning nothing."""
    sources = _sources()
    assert len(sources) > 40
    spelled = {c.text for path, tree in sources for c in chains(path, tree, imports(tree))}
    assert "Qgis.MessageLevel.Critical" in spelled and "Qt.ItemDataRole.UserRole" in spelled


def test_no_qt5_only_constructs():
    problems = []
    for path, tree in _sources():
        import ast
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("PyQt5", "PyQt4"):
                problems.append(f"{rel(path)}:{node.lineno} imports {node.module}: use qgis.PyQt")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("PyQt5", "PyQt4") for a in node.names):
                problems.append(f"{rel(path)}:{node.lineno} imports PyQt5: use qgis.PyQt")
            if isinstance(node, (ast.ImportFrom, ast.Import)):
                for alias in node.names:
                    if alias.name.split(".")[-1] in QT5_ONLY_NAMES:
                        problems.append(f"{rel(path)}:{node.lineno} {alias.name} is gone in Qt 6: "
                                        f"{QT5_ONLY_NAMES[alias.name.split('.')[-1]]}")
            if isinstance(node, ast.FunctionDef) and node.name == "exec_":
                problems.append(f"{rel(path)}:{node.lineno} defines exec_: exec")
        problems += [f"{rel(path)}:{line} calls exec_(): exec() works on both" for line in calls_named(tree, "exec_")]
        for chain in chains(path, tree, imports(tree)):
            if chain.root == "QVariant" and chain.attrs and chain.attrs[0] not in ("isNull",):
                problems.append(f"{chain.path}:{chain.line} {chain.text}: QVariant types are QMetaType.Type in Qt 6")
    assert not problems, "\n".join(problems)


def test_qaction_comes_from_qtgui_with_a_qt5_fallback():
    """Qt 6 moved QAction to QtGui; QGIS 4's qgis.PyQt.QtWidgets does not re-export it."""
    seen = []
    for path, tree in _sources():
        for name, sources in imports(tree).items():
            for imp in sources:
                if imp.name in ("QAction", "QActionGroup", "QShortcut"):
                    seen.append(imp)
                    if imp.module == "qgis.PyQt.QtWidgets":
                        assert imp.fallback, (f"{rel(path)}:{imp.line} imports {imp.name} from QtWidgets outside a "
                                              "Qt 5 fallback (try: from qgis.PyQt.QtGui ... except ImportError:)")
    assert seen, "the plugin's QAction import was not found"


def enum_spelling_problems():
    """(path, line, spelled, message, scoped spelling or None) for each chain that names an enum value through
    a class instead of through its enum, or that does not resolve on this QGIS; and how many values were seen."""
    problems, members = [], 0
    for path, tree in _sources():
        names = imports(tree)
        for chain in chains(path, tree, names):
            imp = next((i for i in names[chain.root] if not i.fallback), names[chain.root][0])
            try:
                obj = _resolve(imp.module, imp.name)
            except (ImportError, AttributeError):
                if any(i.fallback for i in names[chain.root]):
                    continue  # the Qt 6 spelling of a name with a Qt 5 fallback: checked against PyQt6 below
                raise
            parent = obj
            for i, attr in enumerate(chain.attrs):
                spelled = ".".join((chain.root,) + chain.attrs[:i + 1])
                if not hasattr(parent, attr):
                    if isinstance(parent, type) or i == 0:
                        problems.append((chain.path, chain.line, spelled, f"no {attr!r} on this QGIS", None))
                    break
                value = getattr(parent, attr)
                if _is_enum_member(value):
                    members += 1
                    if not (_is_enum_type(parent) and isinstance(value, parent)):
                        scoped = _scoped_spelling(".".join((chain.root,) + chain.attrs[:i]), attr, value)
                        problems.append((chain.path, chain.line, spelled, f"write {scoped}", scoped))
                    break
                if not isinstance(value, type):
                    break  # a function or a constant: nothing further to check
                parent = value
    return problems, members


def test_enum_values_are_spelled_through_their_enum():
    """`Qt.AlignLeft` breaks on PyQt6; `Qt.AlignmentFlag.AlignLeft` works on both. Every spelled chain must also
    resolve on this QGIS, so a typo in a branch no test reaches is caught here."""
    problems, members = enum_spelling_problems()
    assert not problems, "\n".join(f"{p}:{line} {spelled}: {msg}" for p, line, spelled, msg, _ in problems)
    assert members > 30  # the plugin names this many enum values; fewer means the scan broke


def _pyqt6_path():
    return os.environ.get("RSGEN_PYQT6_PATH") or os.path.join(sys.prefix, "qt6")


PYQT6_CHECK = r"""
import importlib, json, sys
wanted = json.load(sys.stdin)
missing = []
for module, name, attrs, where in wanted:
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        missing.append(f"{where}: {module}.{name} ({e})"); continue
    for attr in attrs:
        if not hasattr(obj, attr):
            missing.append(f"{where}: {module}.{name}.{'.'.join(attrs)} (no {attr!r})"); break
        obj = getattr(obj, attr)
        if not isinstance(obj, type):
            break
print(json.dumps(missing))
"""


def test_every_qt_name_exists_in_pyqt6():
    env = dict(os.environ, PYTHONPATH=_pyqt6_path(), QT_QPA_PLATFORM="offscreen")
    probe = subprocess.run([sys.executable, "-c", "import PyQt6.QtWidgets"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        if os.environ.get("CI"):  # make test installs it: in CI a missing PyQt6 is a broken install, not a skip
            pytest.fail(f"PyQt6 is not importable from {_pyqt6_path()}: {probe.stderr.strip()[-500:]}")
        pytest.skip(f"PyQt6 is not importable from {_pyqt6_path()} (make test installs it there): "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    wanted = []
    for path, tree in _sources():
        names = imports(tree)
        for name, sources in names.items():
            for imp in sources:
                if imp.module.startswith("qgis.PyQt") and not imp.fallback:
                    module = "PyQt6" + imp.module[len("qgis.PyQt"):]
                    wanted.append([module, imp.name, [], f"{rel(path)}:{imp.line}"])
        for chain in chains(path, tree, names):
            imp = next((i for i in names[chain.root] if not i.fallback), None)
            if imp is not None and imp.module.startswith("qgis.PyQt") and imp.name != "sip":
                module = "PyQt6" + imp.module[len("qgis.PyQt"):]
                wanted.append([module, imp.name, list(chain.attrs), f"{chain.path}:{chain.line}"])
    assert len(wanted) > 50
    run = subprocess.run([sys.executable, "-c", PYQT6_CHECK], input=json.dumps(wanted), env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    missing = json.loads(run.stdout)
    assert not missing, "missing in PyQt6:\n" + "\n".join(missing)


def test_metadata_declares_qgis4():
    meta = configparser.ConfigParser()
    meta.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8")
    general = meta["general"]
    assert general.get("supportsQt6", "").strip().lower() in ("true", "yes")
    major, minor = (int(p) for p in general["qgisMaximumVersion"].split(".")[:2])
    assert (major, minor) >= (4, 99)
    assert general["qgisMinimumVersion"] == "3.22"
