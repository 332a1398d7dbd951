"""Packages a model takes a part from instead of carrying it: its autoencoder (latent models, the manifest's
`autoencoder`) and its text encoder with the tokenizer's vocabulary (`graphs.text_encoder.package`,
`tokenizer.package`: e.g. the 23 MB MiniLM of rsgen-base, named by a second model instead of copied).

One lookup for both (find_referenced): the folder named by the id beside the model's folder first, then the model
search path. What is taken is pinned by sha256 in the model's own manifest and read through the door of the named
package's own files (package_files.package_file: listed in its manifest, inside its folder, no links, hashed), so
another file under the same id is refused, naming the file. One level only: the named package must carry the part
itself, so no chain and no cycle of references is ever followed.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Tuple

from ..errors import ModelPackageError
from .manifest_schema import text_package
from .models import ModelPackage, check_io, read_package, scan
from .package_files import MANIFEST, package_file, refuse_links
from .text import TextEncoder


def find_referenced(pkg: ModelPackage, ref_id: str, need: str, fits: Callable[[ModelPackage], Optional[str]],
                    extra_dirs: Iterable[str] = ()) -> ModelPackage:
    """The package `ref_id` that `pkg` takes a part from: the folder `ref_id` beside pkg's folder, else the packages
    with that id on the search path, in order; the first that `fits` (which returns why a package does not fit, or
    None). need: what the model needs, for messages ("needs the autoencoder package 'taef2'")."""
    mpath = pkg.file(MANIFEST)
    if ref_id == pkg.id:
        raise ModelPackageError(f"{mpath}: model {pkg.id!r} {need}: its own id (a package cannot take a part "
                                "from itself).")
    beside = os.path.join(os.path.dirname(pkg.path), ref_id)  # ref_id: one safe folder name (manifest_schema)
    cands: List[ModelPackage] = []
    refused: List[str] = []
    if os.path.isfile(os.path.join(beside, MANIFEST)):
        try:
            cands.append(read_package(beside))
        except ModelPackageError as exc:
            refused.append(str(exc))
    for _, cand, claimed, problem in scan(extra_dirs):
        if claimed != ref_id:
            continue
        if cand is None:
            refused.append(problem)
        elif all(c.path != cand.path for c in cands):
            cands.append(cand)
    for cand in cands:
        if cand.id != ref_id or cand.path == pkg.path:
            continue
        why = fits(cand)
        if why is None:
            return cand
        refused.append(f"{cand.path}: {why}")
    if refused:
        raise ModelPackageError(f"{mpath}: model {pkg.id!r} {need}; no installed package with that id fits: "
                                f"{'; '.join(dict.fromkeys(refused))}")
    raise ModelPackageError(f"{mpath}: model {pkg.id!r} {need}, which is not installed (install its zip like a "
                            f"model: the dock's model … menu, or `python -m rsgen_qgis install-model {ref_id}.zip "
                            f"--dest DIR`; or put its folder beside {os.path.basename(pkg.path)!r}).")


def _is_autoencoder(cand: ModelPackage) -> Optional[str]:
    return None if cand.kind == "autoencoder" else f"a {cand.kind} model, not an autoencoder package"


def _carries_text_encoder(cand: ModelPackage) -> Optional[str]:
    if cand.kind == "autoencoder" or "text_encoder" not in cand.manifest["graphs"] or cand.interface != "rsgen":
        return "it has no rsgen text encoder of its own"
    ref = text_package(cand.manifest)
    if ref is not None:
        return (f"it takes its own text encoder from {ref!r} (one level only: the package named must carry the text "
                "encoder itself)")
    return None


def find_autoencoder(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> ModelPackage:
    """The autoencoder package a latent model names: beside the model's folder first, then on the search path."""
    spec = pkg.manifest.get("autoencoder") or {}
    ae_id = spec.get("package")
    if not isinstance(ae_id, str) or not ae_id:
        raise ModelPackageError(f"{pkg.file(MANIFEST)}: the 'autoencoder' section names no package.")
    return find_referenced(pkg, ae_id, f"needs the autoencoder package {ae_id!r}", _is_autoencoder, extra_dirs)


def find_text_package(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> Optional[ModelPackage]:
    """The package a model takes its text encoder from (None: it carries its own, or has none)."""
    ref = text_package(pkg.manifest)
    if ref is None:
        return None
    return find_referenced(pkg, ref, f"takes its text encoder from the package {ref!r}", _carries_text_encoder,
                           extra_dirs)


def pinned_file(pkg: ModelPackage, owner: ModelPackage, name: str, sha256: str) -> str:
    """The verified path of `owner`'s file `name`, which `pkg` pins to `sha256`: refused, naming the file, when
    owner's manifest lists another sha256 (another version of that package) or the bytes differ from it."""
    listed = owner.manifest["files"].get(name)
    if isinstance(listed, dict) and listed.get("sha256") != sha256:
        raise ModelPackageError(f"{os.path.join(owner.path, name)}: not the file model {pkg.id!r} was made with: its "
                                f"sha256 differs from the one {pkg.file(MANIFEST)} pins (another version of "
                                f"{owner.id!r} is installed). Not loaded.")
    return package_file(owner.path, owner.manifest["files"], name)


def text_files(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> Optional[Tuple[str, str]]:
    """(text encoder graph, vocabulary) paths of an rsgen package, verified: its own files, or the pinned files of
    the package it names. None when it has no text encoder."""
    g = pkg.manifest["graphs"].get("text_encoder")
    if g is None:
        return None
    tok = pkg.manifest.get("tokenizer", {})
    owner = find_text_package(pkg, extra_dirs)
    if owner is None:
        return pkg.file(g["file"]), pkg.file(tok.get("vocab", "vocab.txt"))
    refuse_links(owner.path)  # the graph is opened from that folder
    return pinned_file(pkg, owner, g["file"], g["sha256"]), pinned_file(pkg, owner, tok["vocab"], tok["vocab_sha256"])


def open_text_encoder(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> Optional[TextEncoder]:
    """The rsgen package's text encoder opened (on the CPU: a dozen tokens), its graph's inputs and outputs and its
    width checked against the manifest; None when it has none."""
    files = text_files(pkg, extra_dirs)
    if files is None:
        return None
    tfile, vocab = files
    tok = pkg.manifest.get("tokenizer", {})
    try:
        text = TextEncoder(tfile, vocab, max_length=int(tok.get("max_length", 64)), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelPackageError(f"{tfile}: cannot load the text encoder ({exc}).") from exc
    check_io(pkg, "text_encoder", text.session, tfile)
    span = pkg.manifest.get("conditions", {}).get("cond_layout", {}).get("text")
    if span and int(span[1]) != text.dim:
        raise ModelPackageError(f"{tfile}: the text encoder gives {text.dim} values per prompt; model {pkg.id!r} "
                                f"takes {span[1]} (conditions.cond_layout.text).")
    return text


def missing_references(pkg: ModelPackage, extra_dirs: Iterable[str] = ()) -> List[str]:
    """Why the packages `pkg` takes parts from cannot be used (not installed, or none that fits), one message each;
    empty when they are found (their files are verified when the model loads). For install and listing messages."""
    out = []
    checks = [find_text_package]
    if pkg.kind == "latent" and pkg.interface == "rsgen":
        checks.append(find_autoencoder)
    for check in checks:
        try:
            check(pkg, extra_dirs)
        except ModelPackageError as exc:
            out.append(str(exc))
    return out
