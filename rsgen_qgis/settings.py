"""The plugin's persistent settings, in QGIS's own settings store (QgsSettings, per user profile).

All keys live under `rsgen_qgis/`. Reading goes through these functions so the dock, Processing and the
task agree on defaults and types (QSettings hands back strings, lists or None depending on the backend).
Extra model folders also come from $RSGEN_MODEL_DIRS (os.pathsep-separated), the same variable the engine
and the CLI read, so scripts and tests can point QGIS at a model without touching the user's profile.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, List

from qgis.core import QgsApplication, QgsSettings

from .core.request import DEFAULT_MODEL, DEFAULT_PIXEL_BUDGET, DEFAULT_SAMPLER

PREFIX = "rsgen_qgis/"
KEY_MODEL_DIRS = PREFIX + "model_dirs"
KEY_PIXEL_BUDGET = PREFIX + "pixel_budget"
KEY_PROVIDER = PREFIX + "execution_provider"
ENV_MODEL_DIRS = "RSGEN_MODEL_DIRS"
PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "cpu")

# Last values the user generated with, restored when the dock opens: name -> (default, type).
LAST_DEFAULTS = {
    "prompt": ("", str),
    "model": (DEFAULT_MODEL, str),
    "seed": (0, int),
    "steps": (20, int),
    "guidance": (3.0, float),
    "sampler": (DEFAULT_SAMPLER, str),
    "precision": ("auto", str),
    "gsd_m": (4.0, float),
    "class_guidance": (-1.0, float),  # -1: never set, the model's default
    "autoguidance": (-1.0, float),  # -1: never set, the model's default
}


def _as_list(value: Any) -> List[str]:
    """QSettings returns None, a str (one entry, or an INI backend's joined list) or a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v for v in value.split(os.pathsep) if v]
    return [str(v) for v in value if v]


def settings_model_dirs() -> List[str]:
    """Folders the user added in the plugin settings (each a model package or a folder of packages)."""
    return _as_list(QgsSettings().value(KEY_MODEL_DIRS, []))


def env_model_dirs() -> List[str]:
    return [d for d in os.environ.get(ENV_MODEL_DIRS, "").split(os.pathsep) if d]


def model_dirs() -> List[str]:
    """Extra model folders to search, settings first, then $RSGEN_MODEL_DIRS, without duplicates.

    The bundled models (<plugin>/models and <plugin>/../models) are added by core.runtime.models itself."""
    out: List[str] = []
    for d in settings_model_dirs() + env_model_dirs():
        if d not in out:
            out.append(d)
    return out


def set_model_dirs(dirs: Iterable[str]) -> None:
    QgsSettings().setValue(KEY_MODEL_DIRS, [str(d) for d in dirs if d])


def add_model_dir(folder: str) -> None:
    """Append a folder to the user's model folders (once)."""
    dirs = settings_model_dirs()
    if folder not in dirs:
        set_model_dirs(dirs + [folder])


def installed_models_dir() -> str:
    """Where models installed from a zip go: `rsgen_models` in the user's QGIS profile folder."""
    return os.path.join(QgsApplication.qgisSettingsDirPath(), "rsgen_models")


def pixel_budget() -> int:
    """Largest output (width x height) one request may ask for; keeps a click from freezing QGIS for hours."""
    try:
        value = int(QgsSettings().value(KEY_PIXEL_BUDGET, DEFAULT_PIXEL_BUDGET))
    except (TypeError, ValueError):
        return DEFAULT_PIXEL_BUDGET
    return value if value > 0 else DEFAULT_PIXEL_BUDGET


def set_pixel_budget(pixels: int) -> None:
    QgsSettings().setValue(KEY_PIXEL_BUDGET, int(pixels))


def provider_preference() -> str:
    """auto (TensorRT > CUDA > CPU, what is installed), tensorrt, cuda or cpu."""
    value = str(QgsSettings().value(KEY_PROVIDER, "auto") or "auto").lower()
    return value if value in PROVIDER_CHOICES else "auto"


def set_provider_preference(value: str) -> None:
    QgsSettings().setValue(KEY_PROVIDER, value if value in PROVIDER_CHOICES else "auto")


def last(name: str) -> Any:
    """The last value used for a dock field, converted to its type (default when unset or unreadable)."""
    default, kind = LAST_DEFAULTS[name]
    raw = QgsSettings().value(PREFIX + "last/" + name, default)
    try:
        return kind(raw)
    except (TypeError, ValueError):
        return default


KEY_RECENT_PROMPTS = PREFIX + "recent_prompts"
RECENT_PROMPTS = 10


def recent_prompts() -> List[str]:
    """The prompts generated with last, newest first."""
    return _as_list(QgsSettings().value(KEY_RECENT_PROMPTS, []))[:RECENT_PROMPTS]


def remember_prompt(prompt: str) -> None:
    prompt = " ".join(str(prompt or "").split())
    if prompt:
        rest = [p for p in recent_prompts() if p != prompt]
        QgsSettings().setValue(KEY_RECENT_PROMPTS, ([prompt] + rest)[:RECENT_PROMPTS])


def has_last(name: str) -> bool:
    """Whether a value for this dock field was stored (False on a fresh profile: the dock then takes the chosen
    model's own defaults instead of LAST_DEFAULTS)."""
    if name not in LAST_DEFAULTS:
        raise KeyError(f"unknown setting {name!r}")
    return QgsSettings().contains(PREFIX + "last/" + name)


def set_last(**values: Any) -> None:
    s = QgsSettings()
    for name, value in values.items():
        if name not in LAST_DEFAULTS:
            raise KeyError(f"unknown setting {name!r}")
        s.setValue(PREFIX + "last/" + name, value)
