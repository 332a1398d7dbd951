"""The translations (French, German, Spanish, Portuguese): complete for every text the dock and the plugin show, placeholders
intact, and the compiled .qm files that QGIS loads say what the .ts sources say."""
import os
import string

import pytest
from qgis.PyQt.QtCore import QCoreApplication, QTranslator

import i18n  # tools/i18n.py (conftest puts tools/ on the path)

LANGUAGES = ("de", "es", "fr", "pt")


def ts_path(lang):
    return os.path.join(i18n.I18N, f"rsgen_qgis_{lang}.ts")


def fields(text):
    return sorted((name, spec, conv) for _, name, spec, conv in string.Formatter().parse(text) if name is not None)


def sample(text):
    """Keyword values that fit the text's format specs ({n:,} an int, {s:.1f} a float, else a string)."""
    out = {}
    for name, spec, _ in fields(text):
        out[name] = 12345 if spec == "," else 1.5 if spec else "x"
    return out


def test_the_scan_finds_the_dock():
    texts = i18n.strings()
    assert len(texts) > 100 and "Generate" in texts and "Map canvas" in texts  # a literal and a table entry


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_text_is_translated(lang):
    _, entries = i18n.read_ts(ts_path(lang))
    texts = i18n.strings()
    missing = [t for t in texts if t not in entries or not entries[t][1] or not entries[t][0]]
    stale = [t for t in entries if t not in texts]
    assert not missing, f"untranslated in {lang} (python tools/i18n.py update, translate, release): {missing}"
    assert not stale, f"no longer in the code (python tools/i18n.py update): {stale}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_placeholders_and_accelerators_survive(lang):
    _, entries = i18n.read_ts(ts_path(lang))
    for source, (translation, _) in entries.items():
        assert fields(translation) == fields(source), (source, translation)
        assert translation.count("&") == source.count("&"), (source, translation)
        translation.format(**sample(source))  # the code formats the translated text with the source's keys


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_qm_says_what_the_ts_says(lang):
    translator = QTranslator()
    assert translator.load(ts_path(lang)[:-3] + ".qm")
    _, entries = i18n.read_ts(ts_path(lang))
    QCoreApplication.installTranslator(translator)  # QCoreApplication.translate, as tr(): UTF-8 sources
    try:
        wrong = [s for s, (t, _) in entries.items() if QCoreApplication.translate(i18n.CONTEXT, s) != t]
    finally:
        QCoreApplication.removeTranslator(translator)
    assert not wrong, f"rsgen_qgis_{lang}.qm is older than its .ts (python tools/i18n.py release): {wrong[:5]}"


def test_the_dock_in_french(qgis_iface, qgis_new_project, monkeypatch):
    from rsgen_qgis import settings
    from rsgen_qgis.gui.dock import GenerationDock

    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)
    translator = QTranslator()
    assert translator.load(ts_path("fr")[:-3] + ".qm")
    QCoreApplication.installTranslator(translator)
    try:
        dock = GenerationDock(qgis_iface)
        try:
            assert dock.generate_btn.text() == "Générer" and dock.windowTitle() == "Génération d'images satellite"
            assert dock.source_combo.itemText(0) == "Canevas de carte"
            assert [a.text() for a in dock.add_models_btn.menu().actions()][1] == \
                "Installer un paquet de modèle depuis un zip…"
        finally:
            dock.cleanup()
            dock.deleteLater()
    finally:
        QCoreApplication.removeTranslator(translator)


def test_every_translation_file_is_checked():
    assert sorted(os.path.basename(p)[len("rsgen_qgis_"):-3] for p in i18n.ts_files()) == sorted(LANGUAGES)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_dock_is_no_wider_than_in_english(lang, qgis_iface, qgis_new_project, monkeypatch):
    """Longer translated texts must not widen the dock: QGIS gives it the same width in every language."""
    from qgis.PyQt.QtWidgets import QApplication

    from rsgen_qgis import settings
    from rsgen_qgis.gui.dock import GenerationDock

    monkeypatch.delenv(settings.ENV_MODEL_DIRS, raising=False)

    def widest(translator=None):
        if translator is not None:
            QCoreApplication.installTranslator(translator)
        dock = GenerationDock(qgis_iface)
        try:
            dock.conditions.layout_group.setChecked(True)
            dock.conditions.raster_group.setChecked(True)
            dock.show()
            QApplication.processEvents()
            return dock.widget().minimumSizeHint().width(), max(
                w.minimumSizeHint().width() for w in dock.findChildren(QWidget) if w.isVisible())
        finally:
            dock.cleanup()
            dock.deleteLater()
            if translator is not None:
                QCoreApplication.removeTranslator(translator)

    from qgis.PyQt.QtWidgets import QWidget
    english = widest()
    translator = QTranslator()
    assert translator.load(ts_path(lang)[:-3] + ".qm")
    translated = widest(translator)
    assert translated[1] <= english[1] + 24, (lang, translated, english)  # a few characters of slack
