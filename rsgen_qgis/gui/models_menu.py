"""The model row's "…" menu: add a folder of model packages, install a package from its zip, read the chosen
model's card. The plugin from plugins.qgis.org comes without its model (25 MB limit), so this is where a user
gets one; core.runtime.install does the checking, this only asks for the file and tells what happened."""
from __future__ import annotations

import os
from typing import Callable, Optional

from qgis.core import Qgis
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QApplication, QFileDialog, QMenu, QWidget

from .. import settings
from ..core.errors import ModelPackageError
from . import tr

CARD_NAMES = ("MODEL_CARD.md", "README.md")


class ModelMenu(QMenu):
    """current_folder(): the chosen package's folder (or None); models_changed(model_id or None): the dock
    refreshes its model list and selects that id; message(text, level, seconds): the message bar."""

    def __init__(self, parent: QWidget, current_folder: Callable[[], Optional[str]],
                 models_changed: Callable[[Optional[str]], None], message: Callable[[str, int, int], None]):
        super().__init__(parent)
        self._current_folder, self._models_changed, self._message = current_folder, models_changed, message
        self.add_folder_action = self.addAction(tr("Add a Folder with Model Packages…"))
        self.install_zip_action = self.addAction(tr("Install a Model Package from a Zip…"))
        self.addSeparator()
        self.model_card_action = self.addAction(tr("Model Card (what this model can and cannot do)"))
        self.add_folder_action.triggered.connect(self.add_folder)
        self.install_zip_action.triggered.connect(self.choose_zip)
        self.model_card_action.triggered.connect(self.open_model_card)

    def add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.parentWidget(), tr("Folder with model packages"))
        if folder:
            settings.add_model_dir(folder)
            self._models_changed(None)

    def choose_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.parentWidget(), tr("Model package zip (such as rsgen-base.zip)"),
                                              "", tr("Zip files (*.zip)"))
        if path:
            self.install_zip(path)

    def install_zip(self, path: str) -> bool:
        """Install (verify, then unpack into the profile's rsgen_models folder) and select the model in `path`."""
        from ..core.runtime.install import install_zip
        from ..core.runtime.references import missing_references

        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            pkg = install_zip(path, settings.installed_models_dir())
        except ModelPackageError as exc:
            self._message(str(exc), Qgis.MessageLevel.Critical, 0)
            return False
        finally:
            QApplication.restoreOverrideCursor()
        settings.add_model_dir(os.path.dirname(pkg.path))
        self._models_changed(pkg.id)
        said = tr("Installed model {name} in {path}.").format(name=pkg.name, path=pkg.path)
        missing = missing_references(pkg, settings.model_dirs())  # a package it takes a part from, not installed
        if missing:  # the engine's messages stay English (tools/i18n.py)
            self._message(" ".join([said] + missing), Qgis.MessageLevel.Warning, 0)
        else:
            self._message(said, Qgis.MessageLevel.Success, 8)
        return True

    def model_card(self) -> Optional[str]:
        """The chosen package's MODEL_CARD.md (or README.md), if it has one."""
        folder = self._current_folder()
        for name in CARD_NAMES if folder else ():
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
        return None

    def open_model_card(self) -> None:
        path = self.model_card()
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def update_actions(self) -> None:
        self.model_card_action.setEnabled(self.model_card() is not None)
