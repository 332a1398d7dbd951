"""GenerationTask: the dock's generation as a QgsTask, so QGIS stays responsive and shows the task's progress.

run() happens on a worker thread: it calls the engine with plain data and touches no layer, widget or
project (QGIS's GUI objects live on the main thread). finished() runs back on the main thread: it adds the
layer and reports, through callbacks, success or a one-line message. Every exception is caught in run():
an exception escaping a QgsTask ends up as a Python traceback dialog, which users must never see.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Iterable, List, Optional, Tuple

from qgis.core import Qgis, QgsMessageLog, QgsRasterLayer, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.errors import Cancelled, RsgenError
from ..core.request import GenerationRequest
from . import tr
from .layers import add_result_layer, layer_name

LOG_TAG = "rsgen"
SuccessCallback = Callable[[object, QgsRasterLayer], None]  # (GenerationResult, layer)
FailureCallback = Callable[[str, int], None]  # (message, Qgis.MessageLevel)


PIP_NAMES = {"onnxruntime": "onnxruntime", "numpy": "numpy", "yaml": "pyyaml", "rasterio": "rasterio",
             "pyproj": "pyproj"}


def install_command(package: str, platform: str = sys.platform, base_prefix: str = sys.base_prefix,
                    version: Tuple[int, int] = tuple(sys.version_info[:2]), exists=os.path.exists) -> str:
    """The command that installs `package` for the Python QGIS runs, on this platform. In QGIS sys.executable is
    QGIS itself, so the interpreter is found from sys.base_prefix; on Windows pip must run where QGIS's DLLs are
    found, i.e. in the OSGeo4W Shell that QGIS installs."""
    if platform == "win32":
        return f"in the OSGeo4W Shell (Start menu, next to QGIS): python -m pip install {package}"
    python = os.path.join(base_prefix, "bin", f"python{version[0]}.{version[1]}")
    if not exists(python):
        python = "python3"
    # PEP 668 (Debian 12 and later): the system Python refuses pip without these two flags
    managed = exists(os.path.join(base_prefix, "lib", f"python{version[0]}.{version[1]}", "EXTERNALLY-MANAGED"))
    flags = " --user --break-system-packages" if managed else " --user"
    return f"{python} -m pip install{flags} {package}"


def missing_package_message(exc: ImportError) -> str:
    """ImportError in QGIS's Python nearly always means onnxruntime (or numpy) is not installed there."""
    name = getattr(exc, "name", None) or str(exc)
    if name.startswith("rsgen_qgis"):
        return (f"The plugin's installation is incomplete: its module {name!r} is missing. Reinstall the plugin "
                "(Plugins > Manage and Install Plugins > Install from ZIP).")
    package = PIP_NAMES.get(name.split(".")[0], name.split(".")[0])
    return (f"The Python package {name!r} is missing from QGIS's Python. Install it for QGIS's interpreter "
            f"({install_command(package)}) and restart QGIS; or start QGIS with PYTHONPATH pointing at the "
            f"site-packages of the plugin's venv (see the README).")


class GenerationTask(QgsTask):
    """One request -> one GeoTIFF -> one layer in the "Generated" group."""

    stepMessage = pyqtSignal(str)  # the engine's progress text ("Step 3/20"); queued to the main thread

    def __init__(self, request: GenerationRequest, model_dirs: Iterable[str] = (),
                 providers: Optional[List[str]] = None, on_success: Optional[SuccessCallback] = None,
                 on_failure: Optional[FailureCallback] = None, name: Optional[str] = None):
        self.name = name or layer_name(request.prompt, request.seed)  # the layer's name: what was done, to what
        super().__init__(tr("Generating satellite image: {name}").format(name=self.name), QgsTask.Flag.CanCancel)
        self.request = request
        self.model_dirs = list(model_dirs)
        self.providers = list(providers) if providers else None
        self.on_success = on_success
        self.on_failure = on_failure
        self.result = None  # GenerationResult once run() succeeded
        self.layer: Optional[QgsRasterLayer] = None
        self.error: Optional[str] = None
        self.details: Optional[str] = None
        self.was_cancelled = False
        self.done = False  # set last in finished(): tests and the dock wait on it

    # -- worker thread -------------------------------------------------------------------------------------
    def run(self) -> bool:
        try:
            # onnxruntime & co. load only when someone generates; the engine settings (graph, threads, batching,
            # providers) are the command line's and the bench's (tests/test_first_hour.py holds them equal)
            from ..core.engine.generate import generate

            self.result = generate(self.request, progress=self._progress, cancelled=self.isCanceled,
                                   model_dirs=self.model_dirs, providers=self.providers)
            return True
        except Cancelled:
            self.was_cancelled = True
        except RsgenError as exc:
            self.error = str(exc)
        except ImportError as exc:
            self.error = missing_package_message(exc)
            self.details = traceback.format_exc()
        except Exception as exc:  # noqa: BLE001  (a traceback dialog is worse than a message)
            self.error = f"Generation failed unexpectedly: {exc} (details in the Log Messages panel, tab '{LOG_TAG}')."
            self.details = traceback.format_exc()
        return False

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        self.stepMessage.emit(str(message))

    # -- main thread ---------------------------------------------------------------------------------------
    def finished(self, ok: bool) -> None:  # noqa: D401  (QgsTask override)
        try:
            if ok and self.result is not None:
                self.layer = add_result_layer(self.result.path, self.name)
                for warning in getattr(self.result, "warnings", []) or []:
                    QgsMessageLog.logMessage(warning, LOG_TAG, Qgis.MessageLevel.Warning)
                if self.on_success:
                    self.on_success(self.result, self.layer)
            elif self.was_cancelled or (self.error is None and self.isCanceled()):
                self.was_cancelled = True
                self._fail("Generation cancelled; nothing was written.", Qgis.MessageLevel.Info)
            else:
                self._fail(self.error or "Generation failed.", Qgis.MessageLevel.Critical)
        except RsgenError as exc:
            self._fail(str(exc), Qgis.MessageLevel.Critical)
        except Exception as exc:  # noqa: BLE001  (same reason as in run())
            self.details = traceback.format_exc()
            self._fail(f"Adding the generated layer failed: {exc}", Qgis.MessageLevel.Critical)
        finally:
            self.done = True

    def _fail(self, message: str, level: int) -> None:
        if self.details:
            QgsMessageLog.logMessage(f"{message}\n{self.details}", LOG_TAG, Qgis.MessageLevel.Critical)
        else:
            QgsMessageLog.logMessage(message, LOG_TAG, level)
        if self.on_failure:
            self.on_failure(message, level)


class EstimateTask(QgsTask):
    """The large-area estimate (windows and time) off the main thread: it loads the model and times one batch,
    seconds that froze the dock when Generate did it. `on_done(windows_per_step, seconds)` or
    `on_done(None, message)` runs on the main thread."""

    def __init__(self, request: GenerationRequest, model_dirs: Iterable[str], providers: Optional[List[str]],
                 on_done: Callable[[Optional[int], object], None]):
        super().__init__(tr("Estimating the large-area time"), QgsTask.Flag.CanCancel)
        self.request, self.model_dirs, self.providers, self.on_done = request, list(model_dirs), providers, on_done
        self.value: Optional[Tuple[int, float]] = None
        self.error: Optional[str] = None

    def run(self) -> bool:
        try:
            from ..core.engine import blocks

            self.value = blocks.estimate_request(self.request, self.model_dirs, self.providers)
            return True
        except RsgenError as exc:
            self.error = str(exc)
        except ImportError as exc:
            self.error = missing_package_message(exc)
        except Exception as exc:  # noqa: BLE001
            self.error = str(exc)
        return False

    def finished(self, ok: bool) -> None:  # noqa: D401
        if self.on_done is None:
            return
        if ok and self.value is not None:
            self.on_done(int(self.value[0]), float(self.value[1]))
        else:
            self.on_done(None, self.error or "")
