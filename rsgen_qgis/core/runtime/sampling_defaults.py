"""The steps, guidance and sampler of a request whose door was given none: the model package's own `defaults`
(the settings it was evaluated with, and what the dock shows when the model is picked), else the engine's.

Every door resolves them the same way (the dock on the user's pick of a model, the CLI, the batch runner and
Processing when the option is left empty), so one model gives one image for the same request whichever door
it comes through. A value in the manifest that a request would refuse (a bool, out of range, an unknown sampler)
is passed over for the engine's default, as the dock passes it over."""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Optional

from ..request import DEFAULT_SAMPLER, SAMPLERS

ENGINE_DEFAULTS = {"steps": 20, "guidance": 3.0, "sampler": DEFAULT_SAMPLER}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def package_defaults(manifest: Any) -> Dict[str, Any]:
    """{"steps", "guidance", "sampler"} from a manifest's `defaults`, each valid one taken, the rest the engine's."""
    d = manifest.get("defaults") if isinstance(manifest, dict) else None
    d = d if isinstance(d, dict) else {}
    out = dict(ENGINE_DEFAULTS)
    steps = d.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 1000:
        out["steps"] = steps
    guidance = d.get("guidance")
    if _number(guidance) and math.isfinite(guidance) and guidance >= 0:
        out["guidance"] = float(guidance)
    if d.get("sampler") in SAMPLERS:
        out["sampler"] = d["sampler"]
    return out


def resolve(model: str, extra_dirs: Iterable[str] = (), steps: Optional[int] = None,
            guidance: Optional[float] = None, sampler: Optional[str] = None) -> Dict[str, Any]:
    """The given values, with each one left None taken from the package of `model` (found as the engine finds
    it: id or folder, the extra folders first). The package is read only when something is missing, so a request
    that names all three never depends on it here; a model that cannot be found raises the engine's own
    ModelPackageError (it names the folders searched)."""
    if steps is not None and guidance is not None and sampler is not None:
        return {"steps": steps, "guidance": guidance, "sampler": sampler}
    from .models import find

    return fill(find(model, extra_dirs).manifest, steps, guidance, sampler)


def fill(manifest: Any, steps: Optional[int] = None, guidance: Optional[float] = None,
         sampler: Optional[str] = None) -> Dict[str, Any]:
    """The given values, with each one left None taken from the manifest's defaults (package_defaults)."""
    base = package_defaults(manifest)
    given = {"steps": steps, "guidance": guidance, "sampler": sampler}
    return {k: (v if v is not None else base[k]) for k, v in given.items()}
