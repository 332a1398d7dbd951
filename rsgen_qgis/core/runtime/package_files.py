"""The one door to a model package's files: every file the run time opens goes through package_file().

A package is untrusted input (../shared/DESIGN.md): its manifest may name any path. package_file() gives the path
of a file only when the name is one plain file name, is listed under the manifest's `files` with its sha256,
resolves to that very name inside the package folder (not a link, not through one) and its bytes hash to the
listed sha256 (cached by path, size and mtime, so a warm run does not hash again). Everything else is refused
with a ModelPackageError naming the file, before a single byte of it is parsed or loaded.
"""
from __future__ import annotations

import hashlib
import os
import stat
from typing import Dict

from ..errors import ModelPackageError
from .manifest_schema import is_safe_name

MANIFEST = "manifest.json"

_verified: Dict[tuple, bool] = {}


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (model packages, batch tiles)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_file(root: str, files: dict, name: str) -> str:
    """The verified path of the package file `name` (see the module docstring); raises ModelPackageError."""
    where = os.path.join(root, name) if isinstance(name, str) else f"{root} ({name!r})"
    if not is_safe_name(name):
        raise ModelPackageError(f"{where}: the manifest names a file outside the package folder (or not a plain file "
                                "name); a package may only use its own listed files. Not loaded.")
    meta = files.get(name) if isinstance(files, dict) else None
    if not isinstance(meta, dict):
        raise ModelPackageError(f"{where}: the manifest names this file but does not list it under 'files' with its "
                                "sha256; a package may only use listed, hashed files. Not loaded.")
    path = os.path.join(root, name)
    try:
        st = os.lstat(path)
    except OSError:
        raise ModelPackageError(f"{path}: file listed in the manifest is missing.") from None
    if stat.S_ISLNK(st.st_mode):
        raise ModelPackageError(f"{path}: is a link; a model package holds plain files only (a link may point "
                                "anywhere). Not loaded.")
    if not stat.S_ISREG(st.st_mode):
        raise ModelPackageError(f"{path}: is not a plain file. Not loaded.")
    if os.path.realpath(path) != os.path.join(os.path.realpath(root), name):
        raise ModelPackageError(f"{path}: resolves outside the package folder. Not loaded.")
    key = (path, st.st_size, st.st_mtime_ns, meta.get("sha256"))
    if _verified.get(key):
        return path
    if "bytes" in meta and st.st_size != meta["bytes"]:
        raise ModelPackageError(f"{path}: size {st.st_size} bytes, the manifest says {meta['bytes']}; "
                                "the file is corrupt or from another model.")
    if sha256_file(path) != meta.get("sha256"):
        raise ModelPackageError(f"{path}: sha256 does not match the manifest; the file is corrupt or from "
                                "another model.")
    _verified[key] = True
    return path


def refuse_links(folder: str) -> None:
    """Refuse a package folder holding a link anywhere at its top: a graph may open files the manifest does not
    list (ONNX external data), and a link may point anywhere."""
    for entry in os.scandir(folder):
        if entry.is_symlink():
            raise ModelPackageError(f"{entry.path}: is a link; a model package holds plain files only (a link may "
                                    "point anywhere). Not loaded.")
