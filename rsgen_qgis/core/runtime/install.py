"""Install a model package from its zip (`make package` writes build/models/<id>.zip) into a models folder.

The plugin from plugins.qgis.org comes without its model (the repository takes 25 MB at most), so a user gets
`rsgen-base.zip` beside it and installs it from the dock, the command line or this function. Safe by
construction: the zip must hold exactly one top folder with a manifest.json and nothing outside it (no absolute
paths, no `..`, no links); it is unpacked into a hidden folder beside the destination, checked there (manifest,
every file's size and sha256), and only then renamed into place. Any failure removes what was unpacked and
leaves an installed model of the same id as it was.

The zip is untrusted input: its manifest (schema, and an id that is one safe folder name) is read from the zip and
checked before anything is written, and an entry name that appears twice is refused (unzipping would keep the
last one silently). A staging folder left by a killed install (its name carries host and process id) is removed
by the next install into the same folder.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import zipfile

from ..errors import ModelPackageError
from .manifest_schema import check_manifest
from .models import ModelPackage, read_package, verify_files

MAX_UNPACKED = 4 << 30  # bytes: a model package is tens of MB; refuse zip bombs long before the disk fills


def _members(zf: zipfile.ZipFile, path: str) -> str:
    """The single top folder's name, after checking every entry stays inside it."""
    tops, total, seen = set(), 0, set()
    for info in zf.infolist():
        name = info.filename
        parts = [p for p in name.replace("\\", "/").split("/") if p]
        if tuple(parts) in seen:
            raise ModelPackageError(f"{path}: entry {name!r} is in the zip twice (unzipping would keep one of them "
                                    "silently); not installed.")
        seen.add(tuple(parts))
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


def _manifest_in_zip(zf: zipfile.ZipFile, path: str, top: str) -> None:
    """The zip's manifest checked against the schema (its id above all) before anything is unpacked."""
    where = f"{path}: {top}/manifest.json"
    try:
        info = zf.getinfo(f"{top}/manifest.json")
    except KeyError:
        raise ModelPackageError(f"{path}: no manifest.json in the zip's folder {top}/; not a model package.") from None
    if info.file_size > 16 << 20:
        raise ModelPackageError(f"{where}: {info.file_size / 1e6:.0f} MB, far more than a manifest; not installed.")
    try:
        data = zf.read(info)
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ModelPackageError(f"{where}: cannot read it ({exc}); not installed.") from exc
    try:
        m = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise ModelPackageError(f"{where}: cannot read the manifest ({exc}); not installed.") from exc
    check_manifest(m, where)


STAGING = ".installing-"


def _staging_prefix() -> str:
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40]
    return f"{STAGING}{host}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def remove_stale_staging(models_dir: str) -> int:
    """Remove staging folders of installs into `models_dir` killed on this host (their process is gone)."""
    prefix = _staging_prefix().rsplit("-", 2)[0] + "-"  # '.installing-<host>-'
    n = 0
    try:
        names = os.listdir(models_dir)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(models_dir, name), ignore_errors=True)
            n += 1
    return n


def install_zip(path: str, models_dir: str) -> ModelPackage:
    """Unpack, verify and install the model package in the zip at `path` under `models_dir`; return it there.

    An installed package with the same id is replaced only after the new one has been verified."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelPackageError(f"{path}: not a readable zip file ({exc}).") from exc
    with zf:  # everything that can be refused from the zip alone, before a byte is written
        top = _members(zf, path)
        _manifest_in_zip(zf, path, top)
    os.makedirs(models_dir, exist_ok=True)
    remove_stale_staging(models_dir)
    staging = tempfile.mkdtemp(prefix=_staging_prefix(), dir=models_dir)
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                zf.extractall(staging)
            except (OSError, zipfile.BadZipFile) as exc:  # truncated download, disk full
                raise ModelPackageError(f"{path}: could not unpack ({exc}); not installed.") from exc
        unpacked = os.path.join(staging, top)
        pkg = read_package(unpacked)
        verify_files(pkg)
        final = os.path.join(models_dir, pkg.id)  # pkg.id: one safe folder name (manifest_schema)
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
