"""Install a model package from its zip (`make package` writes build/models/<id>.zip) into a models folder.

The plugin from plugins.qgis.org comes without its model (the repository takes 25 MB at most), so a user gets
`rsgen-base.zip` beside it and installs it from the dock, the command line or this function. Safe by
construction: the zip must hold exactly one top folder with a manifest.json and nothing outside it (no absolute
paths, no `..`, no links); it is unpacked into a hidden folder beside the destination, checked there (manifest,
every file's size and sha256), and only then renamed into place. Any failure removes what was unpacked and
leaves an installed model of the same id as it was.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile

from ..errors import ModelPackageError
from .models import ModelPackage, read_package, verify_files

MAX_UNPACKED = 4 << 30  # bytes: a model package is tens of MB; refuse zip bombs long before the disk fills


def _members(zf: zipfile.ZipFile, path: str) -> str:
    """The single top folder's name, after checking every entry stays inside it."""
    tops, total = set(), 0
    for info in zf.infolist():
        name = info.filename
        parts = [p for p in name.replace("\\", "/").split("/") if p]
        if not parts or name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
            raise ModelPackageError(f"{path}: entry {name!r} would unpack outside the model folder; not installed.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ModelPackageError(f"{path}: entry {name!r} is a link; a model package holds plain files only.")
        tops.add(parts[0])
        total += info.file_size
    if len(tops) != 1:
        raise ModelPackageError(f"{path}: a model package zip holds one folder (like rsgen-base/), this one holds "
                                f"{len(tops) or 'no'} top-level entries; not installed.")
    if total > MAX_UNPACKED:
        raise ModelPackageError(f"{path}: unpacks to {total / 1e9:.1f} GB, far more than a model package; "
                                "not installed.")
    return tops.pop()


def install_zip(path: str, models_dir: str) -> ModelPackage:
    """Unpack, verify and install the model package in the zip at `path` under `models_dir`; return it there.

    An installed package with the same id is replaced only after the new one has been verified."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelPackageError(f"{path}: not a readable zip file ({exc}).") from exc
    os.makedirs(models_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".installing-", dir=models_dir)
    try:
        with zf:
            top = _members(zf, path)
            try:
                zf.extractall(staging)
            except (OSError, zipfile.BadZipFile) as exc:  # truncated download, disk full
                raise ModelPackageError(f"{path}: could not unpack ({exc}); not installed.") from exc
        unpacked = os.path.join(staging, top)
        pkg = read_package(unpacked)
        verify_files(pkg)
        final = os.path.join(models_dir, pkg.id)
        old = None
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=".replaced-", dir=models_dir)
            os.replace(final, os.path.join(old, pkg.id))
        try:
            os.replace(unpacked, final)
        except OSError:
            if old is not None:  # put the previous install back
                os.replace(os.path.join(old, pkg.id), final)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return read_package(final)
    except OSError as exc:
        raise ModelPackageError(f"Installing {path} into {models_dir} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
