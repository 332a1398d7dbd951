"""Build the plugin zip for QGIS's "Install from ZIP" (and plugins.qgis.org): `make package`.

Layout QGIS expects: one root folder named like the package, metadata.txt inside it. So:

    rsgen_qgis/metadata.txt        a real file (the source tree has a symlink to ../metadata.txt)
    rsgen_qgis/LICENSE
    rsgen_qgis/*.py, core/, gis/, gui/, processing/, batch/ ...   the package code
    rsgen_qgis/resources/           icons (and i18n) from <repo>/resources
    rsgen_qgis/models/<id>/         the bundled model packages from <repo>/models

Left out: training/ (torch, never imported at run time), tests, __pycache__, caches, editor droppings.

plugins.qgis.org refuses uploads over 25 MB (PLUGIN_MAX_UPLOAD_SIZE, 25 000 000 bytes), and rsgen-base alone is
~40 MB, so `make package` builds three files:
    build/rsgen_qgis.zip                 plugin + bundled models: "Install from ZIP", works offline at once
    build/repository/rsgen_qgis.zip      plugin code only (--no-models): what plugins.qgis.org takes
    build/models/<id>.zip                each model package on its own (--model-zips): unzip it anywhere and add
                                         that folder with the dock's model "…" button (or RSGEN_MODEL_DIRS)
The plugin finds its models at <plugin>/models (zip) or <plugin>/../models (source checkout).
Entries are sorted and time-stamped from metadata so two builds of the same tree are byte-identical.
"""
from __future__ import annotations

import argparse
import configparser
import os
import stat
import sys
import zipfile
from typing import Iterator, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "rsgen_qgis"
EXCLUDE_DIRS = {"__pycache__", "training", "tests", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git",
                ".ipynb_checkpoints"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp", "~", ".tmp", ".partial")
STORED_SUFFIXES = (".onnx", ".data", ".bin", ".png", ".jpg", ".tif")  # already dense: deflate wastes time
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def _walk(src: str, arc: str) -> Iterator[Tuple[str, str]]:
    """(file path, archive name) under src, pruned and sorted; symlinks are followed (their target is stored)."""
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS and not d.startswith("."))
        rel = os.path.relpath(dirpath, src)
        for name in sorted(filenames):
            if name.endswith(EXCLUDE_SUFFIXES) or name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path):
                continue  # dangling link
            yield path, "/".join(p for p in (arc, "" if rel == "." else rel.replace(os.sep, "/"), name) if p)


def collect(models_dir: str, with_models: bool = True) -> List[Tuple[str, str]]:
    entries = [(p, a) for p, a in _walk(os.path.join(ROOT, PACKAGE), PACKAGE)
               if a not in (f"{PACKAGE}/metadata.txt", f"{PACKAGE}/models") and not a.startswith(f"{PACKAGE}/models/")]
    entries.append((os.path.join(ROOT, "metadata.txt"), f"{PACKAGE}/metadata.txt"))
    entries.append((os.path.join(ROOT, "LICENSE"), f"{PACKAGE}/LICENSE"))
    entries += _walk(os.path.join(ROOT, "resources"), f"{PACKAGE}/resources")
    if with_models and os.path.isdir(models_dir):
        for model in sorted(os.listdir(models_dir)):
            if os.path.isfile(os.path.join(models_dir, model, "manifest.json")):
                entries += _walk(os.path.join(models_dir, model), f"{PACKAGE}/models/{model}")
    return entries


def check_metadata() -> str:
    """Refuse to package without the keys QGIS needs to install the plugin; return the version."""
    cfg = configparser.ConfigParser()
    if not cfg.read(os.path.join(ROOT, "metadata.txt"), encoding="utf-8") or "general" not in cfg:
        raise SystemExit("metadata.txt is missing or has no [general] section")
    general = cfg["general"]
    missing = [k for k in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                           "repository") if not general.get(k)]
    if missing:
        raise SystemExit(f"metadata.txt lacks: {', '.join(missing)}")
    return general["version"]


def build(out: str, models_dir: str, with_models: bool = True) -> List[str]:
    version = check_metadata()
    entries = collect(models_dir, with_models)
    names = [a for _, a in entries]
    if len(names) != len(set(names)):
        raise SystemExit("duplicate archive names: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    _write(out, entries)
    print(f"wrote {out}: {PACKAGE} {version}, {len(entries)} files, {os.path.getsize(out) / 1e6:.1f} MB")
    return names


REPOSITORY_LIMIT = 25_000_000  # bytes: plugins.qgis.org's PLUGIN_MAX_UPLOAD_SIZE


def _write(out: str, entries: List[Tuple[str, str]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = out + ".partial"
    with zipfile.ZipFile(tmp, "w") as zf:
        for path, arc in sorted(entries, key=lambda e: e[1]):
            info = zipfile.ZipInfo(arc, FIXED_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if arc.endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    os.replace(tmp, out)


def build_model_zips(out_dir: str, models_dir: str) -> List[str]:
    """One zip per model package under models_dir: `<id>/manifest.json ...` at its root."""
    written = []
    for model in sorted(os.listdir(models_dir)):
        if os.path.isfile(os.path.join(models_dir, model, "manifest.json")):
            out = os.path.join(out_dir, f"{model}.zip")
            _write(out, list(_walk(os.path.join(models_dir, model), model)))
            print(f"wrote {out}: model package {model}, {os.path.getsize(out) / 1e6:.1f} MB")
            written.append(out)
    return written


def repository_note(path: str) -> str:
    size = os.path.getsize(path)
    if size <= REPOSITORY_LIMIT:
        return f"{path}: {size / 1e6:.1f} MB, within plugins.qgis.org's 25 MB upload limit"
    return (f"{path}: {size / 1e6:.1f} MB, over plugins.qgis.org's 25 MB upload limit: for the repository use the "
            "--no-models zip, with the model zips beside it")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "build", f"{PACKAGE}.zip"))
    ap.add_argument("--models", default=os.path.join(ROOT, "models"),
                    help="folder whose model packages are bundled (default: <repo>/models)")
    ap.add_argument("--no-models", action="store_true", help="leave the model packages out")
    ap.add_argument("--model-zips", metavar="DIR", help="also write each model package as DIR/<id>.zip")
    a = ap.parse_args(argv)
    build(a.out, a.models, not a.no_models)
    print(repository_note(a.out))
    if a.model_zips:
        build_model_zips(a.model_zips, a.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
