"""The dock widget (built in code, no .ui file: fewer files to keep in step, and it stays testable)."""
from __future__ import annotations

from typing import Dict

from qgis.gui import QgsDoubleSpinBox, QgsSpinBox
from qgis.PyQt.QtCore import QCoreApplication


def tr(text: str) -> str:
    return QCoreApplication.translate("rsgen_qgis", text)


def spin(lo: int, hi: int, value: int, suffix: str = "") -> QgsSpinBox:
    box = QgsSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setClearValue(value)
    box.setSuffix(suffix)
    return box


def dspin(lo: float, hi: float, value: float, decimals: int, step: float, suffix: str = "") -> QgsDoubleSpinBox:
    box = QgsDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setClearValue(value)
    box.setSuffix(suffix)
    return box


def sampler_labels() -> Dict[str, str]:
    """Sampler id -> label shown to users, in the engine's order."""
    try:
        from ..core.samplers import SAMPLER_LABELS
    except ImportError:  # engine without its samplers module yet: show the ids
        from ..core.request import SAMPLERS

        return {s: s for s in SAMPLERS}
    return dict(SAMPLER_LABELS)
