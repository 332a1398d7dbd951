"""The dock widget (built in code, no .ui file: fewer files to keep in step, and it stays testable).

This module holds the small widget helpers and texts, so dock.py reads as layout + behaviour only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from qgis.gui import QgsDoubleSpinBox, QgsSpinBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QWidget

from ..gis import tr  # noqa: F401  (re-exported: the dock and conditions import it from here)

ERROR_STYLE = "color: #c0392b;"


def form(parent: Optional[QWidget] = None) -> QFormLayout:
    """A form whose rows put the field under its label when the dock is too narrow for both side by side (longer
    translated labels), instead of making the whole dock scroll sideways."""
    layout = QFormLayout(parent) if parent is not None else QFormLayout()
    layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    return layout


def spin(lo: int, hi: int, value: int, suffix: str = "") -> QgsSpinBox:
    box = QgsSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setShowClearButton(False)  # the clear cross crowds narrow docks; these fields have no "empty" value
    box.setSuffix(suffix)
    return box


def dspin(lo: float, hi: float, value: float, decimals: int, step: float, suffix: str = "") -> QgsDoubleSpinBox:
    box = QgsDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setShowClearButton(False)
    box.setSuffix(suffix)
    return box


def narrow(combo: QComboBox, chars: int = 10) -> QComboBox:
    """A combo box that does not widen the dock to its longest item (long model names, translated labels): it
    shrinks to `chars` characters and elides, the full text stays in its list."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


def row(*widgets: QWidget, stretch: Tuple[int, ...] = ()) -> QWidget:
    """Widgets side by side without margins (a form row holding several fields)."""
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        lay.addWidget(w, stretch[i] if i < len(stretch) else 0)
    return box


class FormRows:
    """Rows of a form that come and go, at a fixed place in it. Qt 5's QFormLayout keeps a hidden row's spacing
    (a blank gap where the row was; QFormLayout.setRowVisible is Qt >= 6.4 only), so rows not shown are taken out
    of the form and put back, in their order, when shown. The widgets stay children of the form's widget."""

    def __init__(self, form_layout: QFormLayout, at: int, rows: Dict[str, Tuple[QWidget, QWidget]]):
        self.form, self.at, self.rows = form_layout, at, dict(rows)
        self.shown: List[str] = list(self.rows)
        for i, (label, field) in enumerate(self.rows.values()):
            form_layout.insertRow(at + i, label, field)

    def show_only(self, names: Sequence[str]) -> None:
        names = [n for n in self.rows if n in names]
        if names != self.shown:
            for name in self.shown:
                self.form.takeRow(self.rows[name][1])
            for i, name in enumerate(names):
                self.form.insertRow(self.at + i, *self.rows[name])
            self.shown = names
        for name, widgets in self.rows.items():  # also after a collapsible group box showed all its children
            for w in widgets:
                w.setVisible(name in names)


def wrap_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def set_quiet(box, value) -> None:
    """Set a spin box without firing valueChanged (the dock reads valueChanged as a user edit)."""
    box.blockSignals(True)
    box.setValue(value)
    box.blockSignals(False)


def metres(v: float) -> str:
    """A GSD for people: 0.52 m, 4.00 m, 12.5 m, 250 m."""
    return f"{v:.0f} m" if v >= 100 else f"{v:.1f} m" if v >= 10 else f"{v:.2f} m"


def duration(seconds: float) -> str:
    """A rough duration for estimates: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def sampler_labels() -> Dict[str, str]:
    """Sampler id -> label shown to users, in the engine's order."""
    try:
        from ..core.engine.samplers import SAMPLER_LABELS
    except ImportError:  # engine without its samplers module yet: show the ids
        from ..core.request import SAMPLERS

        return {s: s for s in SAMPLERS}
    return dict(SAMPLER_LABELS)


def sampler_hints() -> Dict[str, str]:
    """Sampler id -> what it is for (the dock's item tooltips); empty with an engine that has no hints."""
    try:
        from ..core.engine.samplers import SAMPLER_HELP
    except ImportError:
        return {}
    return dict(SAMPLER_HELP)


def precision_labels() -> Dict[str, str]:
    """Request precision ids (core.request.PRECISIONS) -> what the dock shows."""
    return {"auto": tr("Fast"), "fp32": tr("Exact (fp32)")}  # short: docks are narrow (the tooltip explains)


def provider_text(preference: str, actual: Optional[str] = None, graph: Optional[str] = None) -> Tuple[str, bool]:
    """('ONNX Runtime: CUDA (GPU)', ok): the provider that ran (after a run, with the denoiser graph it ran:
    fp32, int8 or fp16) or will be tried first."""
    try:
        from ..core.runtime.providers import LABELS, choose

        chosen = choose(preference)
    except ImportError as exc:
        return tr("ONNX Runtime is not installed in QGIS's Python ({err}).").format(err=exc), False
    name = actual or chosen[0]
    text = tr("ONNX Runtime: {label}").format(label=LABELS.get(name, name))
    if actual is not None and graph:
        text += tr(", {graph} graph").format(graph=graph)
    if actual is None and len(chosen) > 1:
        text += tr(" (will try: {order})").format(order=" > ".join(LABELS.get(p, p) for p in chosen))
    return text, True


def model_choices(extra_dirs: Sequence[str]) -> Tuple[List, str, str]:
    """(packages, hint shown when there are none, unreadable packages' messages) for the model combo."""
    from ..core.errors import RsgenError
    from ..core.runtime.models import discover, search_dirs

    problems: List[str] = []
    try:
        packages = discover(extra_dirs, problems)
    except (OSError, RsgenError) as exc:
        packages, problems = [], [str(exc)]
    hint = "" if packages else tr(
        "No model installed (searched: {dirs}). The plugin from plugins.qgis.org comes without its models: get "
        "rsgen-base-1.zip, taef2.zip and rsgen-base.zip (the default model, its autoencoder and its text encoder) "
        "from the plugin's homepage and install each with … > Install a Model Package from a Zip.").format(
        dirs=", ".join(search_dirs(extra_dirs)) or tr("no folder"))
    return packages, hint, "\n".join(problems)


GUIDANCE_SPIN_RANGE = (0.0, 30.0)


def autoguidance_hint(manifest: dict) -> Tuple[bool, str]:
    """(whether the model carries a weak model, the autoguidance control's tooltip)."""
    if "weak_denoiser" not in (manifest.get("graphs") or {}):
        return False, tr("This model has no weaker version of itself to guide with (autoguidance).")
    return True, tr("How far each step moves away from what a weaker version of the model predicts "
                    "(autoguidance): sharper structure and clearer scene classes. Off = 1, which saves about a "
                    "third of the time.")


def class_guidance_hint(manifest: dict) -> Tuple[bool, str]:
    """(whether the model has a class guide, the class guidance control's tooltip)."""
    if not manifest.get("class_guide"):
        return False, tr("This model has no class guide (a scene classifier that steers the image towards the "
                         "scene classes the prompt names).")
    return True, tr("How strongly the model's scene classifier steers the image towards the scene classes the "
                    "prompt names (classifier guidance); Off = 0. Prompts near none of its classes are not "
                    "steered. Costs a few percent more time.")


def guidance_limits(manifest: dict) -> Tuple[float, float, str]:
    """(min, max, tooltip) of the guidance control for a model: a guidance-distilled model (guidance built
    in, one evaluation per step) accepts only the scales it was distilled for."""
    gi = manifest.get("conditions", {}).get("guidance_input")
    if gi:
        lo, hi = gi["range"]
        return float(lo), float(hi), tr("How strongly the prompt and the layout steer the image. This model has "
                                        "guidance built in (distilled) for {lo:g} to {hi:g}; 1 = off. Any "
                                        "value costs the same.").format(lo=lo, hi=hi)
    return GUIDANCE_SPIN_RANGE[0], GUIDANCE_SPIN_RANGE[1], tr(
        "How strongly the prompt and the layout steer the image (classifier-free guidance; 1 = off, which halves "
        "the time)")
