"""The plugin's translation files: resources/i18n/rsgen_qgis_<ll>.ts (source) and .qm (what QGIS loads).

    .venv/bin/python tools/i18n.py strings          every text the dock and the plugin show through tr()
    .venv/bin/python tools/i18n.py update           merge those into each .ts (new ones unfinished, gone ones
                                                    dropped), keeping the translations already there
    .venv/bin/python tools/i18n.py release          .ts -> .qm with Qt's lrelease (qttools5-dev-tools)

Texts are found in the source, not by running it: literal arguments of tr("..."), and the tables whose
entries the code passes to tr(variable) (TABLES below). One Qt context, "rsgen_qgis", as tr() uses. Processing's
algorithm and parameter names are translated, its help texts and the engine's messages (core/) stay English.
"""
from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I18N = os.path.join(ROOT, "resources", "i18n")
CONTEXT = "rsgen_qgis"
SCANNED = ("rsgen_qgis/plugin.py", "rsgen_qgis/gui", "rsgen_qgis/gis", "rsgen_qgis/processing")
# (file, constant): texts the code translates through tr(variable); in tuples of tuples the first item is a key
TABLES = (("rsgen_qgis/plugin.py", "TITLE"), ("rsgen_qgis/plugin.py", "MENU"), ("rsgen_qgis/gui/dock.py", "TITLE"),
          ("rsgen_qgis/gui/dock.py", "SOURCES"), ("rsgen_qgis/gui/conditions.py", "COLUMNS"),
          ("rsgen_qgis/gui/conditions.py", "RASTER_MODES"), ("rsgen_qgis/gui/conditions.py", "RASTER_RESULTS"),
          ("rsgen_qgis/gui/conditions.py", "RULE_BUTTONS"), ("rsgen_qgis/core/engine/samplers.py", "SAMPLER_HELP"))


def _files() -> List[str]:
    out = []
    for entry in SCANNED:
        path = os.path.join(ROOT, entry)
        out += [path] if path.endswith(".py") else sorted(glob.glob(os.path.join(path, "*.py")))
    return out


def _table_texts(value: ast.AST) -> List[str]:
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.Dict):
        return [v.value for v in value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(value, (ast.Tuple, ast.List)):  # keys, icon names ("/x.svg") and empty strings are not texts
        return [e.value for item in value.elts if isinstance(item, (ast.Tuple, ast.List)) for e in item.elts[1:]
                if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value
                and not e.value.endswith(".svg")]
    raise ValueError(f"cannot read texts from {ast.dump(value)[:80]}")


def strings() -> List[str]:
    """Every translatable text, in order of first appearance (files in SCANNED order, then TABLES)."""
    seen: Dict[str, None] = {}
    for path in _files():
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id == "tr" and n.args and isinstance(n.args[0], ast.Constant)
                 and isinstance(n.args[0].value, str)]
        for n in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
            seen.setdefault(n.args[0].value, None)
    for rel, name in TABLES:
        tree = ast.parse(open(os.path.join(ROOT, rel), encoding="utf-8").read())
        found = [n.value for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                 and any(isinstance(t, ast.Name) and t.id == name
                         for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
        if not found:
            raise SystemExit(f"tools/i18n.py: {rel} has no module-level {name} any more; update TABLES")
        for text in _table_texts(found[0]):
            seen.setdefault(text, None)
    return list(seen)


def ts_files() -> List[str]:
    return sorted(glob.glob(os.path.join(I18N, "rsgen_qgis_*.ts")))


def read_ts(path: str) -> Tuple[str, Dict[str, Tuple[str, bool]]]:
    """(language, {source: (translation, finished)})."""
    root = ET.parse(path).getroot()
    out = {}
    for msg in root.iter("message"):
        tr_el = msg.find("translation")
        out[msg.findtext("source")] = (tr_el.text or "", tr_el.get("type") is None)
    return root.get("language", ""), out


def write_ts(path: str, language: str, entries: Dict[str, Tuple[str, bool]]) -> None:
    root = ET.Element("TS", version="2.1", language=language)
    ctx = ET.SubElement(root, "context")
    ET.SubElement(ctx, "name").text = CONTEXT
    for source, (translation, finished) in entries.items():
        msg = ET.SubElement(ctx, "message")
        ET.SubElement(msg, "source").text = source
        t = ET.SubElement(msg, "translation")
        t.text = translation
        if not finished:
            t.set("type", "unfinished")
    ET.indent(root)
    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE TS>\n')
        f.write(ET.tostring(root, encoding="unicode"))
        f.write("\n")


def update() -> None:
    texts = strings()
    for path in ts_files():
        language, old = read_ts(path)
        write_ts(path, language, {s: old.get(s, ("", False)) for s in texts})
        missing = [s for s in texts if not old.get(s, ("", False))[1]]
        print(f"{os.path.relpath(path, ROOT)}: {len(texts)} texts, {len(missing)} to translate")


def release() -> None:
    for path in ts_files():
        subprocess.run(["lrelease", "-silent", path, "-qm", path[:-3] + ".qm"], check=True)
        print(f"wrote {os.path.relpath(path[:-3] + '.qm', ROOT)}")


def main(argv=None) -> int:
    cmd = (argv if argv is not None else sys.argv[1:] or ["strings"])[0]
    if cmd == "strings":
        for s in strings():
            print(repr(s))
    elif cmd == "update":
        update()
    elif cmd == "release":
        release()
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
