"""Shared fixtures: a tiny random-weights model package built with the project's own export code."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (ROOT, os.path.join(ROOT, "tools")):  # tools/: package.py and i18n.py are tested as modules
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REAL_MODEL = os.path.join(ROOT, "models", "rsgen-base")
TAEF2 = os.path.join(ROOT, "models", "taef2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A folder holding the package `rsgen-tiny` (random weights, real format, 32 px tile). RSGEN_TINY_MODEL_DIR
    names one built beforehand (`python -c "from rsgen_qgis.training.export import build_tiny_package as b;
    b('DIR/rsgen-tiny')"`), for running the QGIS-side tests where torch cannot be installed (another QGIS's
    Python)."""
    prebuilt = os.environ.get("RSGEN_TINY_MODEL_DIR")
    if prebuilt:
        if not os.path.isfile(os.path.join(prebuilt, "rsgen-tiny", "manifest.json")):
            pytest.fail(f"RSGEN_TINY_MODEL_DIR={prebuilt} holds no rsgen-tiny/manifest.json")
        return prebuilt
    from rsgen_qgis.training.export import build_tiny_package

    root = tmp_path_factory.mktemp("models")
    build_tiny_package(str(root / "rsgen-tiny"))
    return str(root)


@pytest.fixture(scope="session")
def tiny_latent_dir(tmp_path_factory):
    """A folder with `rsgen-tiny-latent` (random weights, an rsgen denoiser on TAEF2 latents, 64 px tiles) and a
    copy of the taef2 autoencoder package beside it."""
    if not os.path.isfile(os.path.join(TAEF2, "manifest.json")):
        if os.environ.get("CI"):
            pytest.fail("models/taef2 (committed) is missing")
        pytest.skip("models/taef2 is not in this checkout")
    from rsgen_qgis.training.export import build_tiny_package

    root = tmp_path_factory.mktemp("latent_models")
    shutil.copytree(TAEF2, root / "taef2")
    build_tiny_package(str(root / "rsgen-tiny-latent"), seed=3, model_id="rsgen-tiny-latent",
                       autoencoder_dir=str(root / "taef2"))
    return str(root)


@pytest.fixture
def tiny_model_zip(tiny_model_dir, tmp_path):
    """The tiny package as `make package` writes a model zip (build/models/<id>.zip)."""
    import package  # tools/package.py

    return package.build_model_zips(str(tmp_path / "zips"), tiny_model_dir)[0]


@pytest.fixture
def tiny_package_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny package that a test may damage."""
    dst = tmp_path / "pkgs" / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), dst)
    return str(dst)


@pytest.fixture
def real_model():
    if not os.path.isfile(os.path.join(REAL_MODEL, "manifest.json")):
        pytest.skip("the bundled pixel model models/rsgen-base is not in this checkout")
    return REAL_MODEL


@pytest.fixture(scope="session", autouse=True)
def _delete_layers_before_qgis_exits(qgis_app):
    """Map layers that Python still holds when pytest-qgis calls exitQgis() (a layer passed to Processing and kept
    alive by a traceback or a cached fixture, say) are destroyed after their data providers are unloaded, which
    crashes the interpreter on exit and turns a green run into a failed `make test`. Delete them first."""
    yield
    import gc

    from qgis.core import QgsMapLayer, QgsProject
    from qgis.PyQt import sip

    QgsProject.instance().removeAllMapLayers()
    gc.collect()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, QgsMapLayer) and not sip.isdeleted(obj) and sip.ispyowned(obj):
                sip.delete(obj)
        except (RuntimeError, TypeError, ReferenceError):
            pass


@pytest.fixture
def loading_iface(qgis_iface, qgis_new_project, monkeypatch):
    """pytest-qgis's iface with a real layer tree view: QGIS 3.40+'s Processing passes iface.layerTreeView() to C++
    when it loads results (runAndLoadResults), which a mock cannot be (seen on QGIS 3.44); 3.22 never asks."""
    from qgis.core import QgsLayerTreeModel, QgsProject
    from qgis.gui import QgsLayerTreeView

    view = QgsLayerTreeView()
    model = QgsLayerTreeModel(QgsProject.instance().layerTreeRoot())
    view.setModel(model)
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view, raising=False)
    yield qgis_iface
    view.deleteLater()
    del model
