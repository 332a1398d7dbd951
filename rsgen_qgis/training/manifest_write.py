"""Rewrite a model package's manifest.json atomically: the tools that add a part to a package (int8 graphs, a class
guide, a weak model, a prompt bank) write their files first and the manifest last, so a failure leaves the package
as it was."""
from __future__ import annotations

import json
import os


def replace_manifest(folder: str, manifest: dict) -> None:
    """folder/manifest.json := manifest (indent 1), through a temporary file in the same folder."""
    tmp = os.path.join(folder, ".manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(folder, "manifest.json"))
