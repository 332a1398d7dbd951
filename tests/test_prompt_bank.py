"""A package's prompt bank (core.engine.prompt_bank): a free-form prompt read as a mixture of the phrases the model
was trained with; the mixture, the record, the tool that adds a bank, and manifests that get it wrong."""
import json
import os
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from rsgen_qgis.core.engine import prompt_bank
from rsgen_qgis.core.engine.generate import generate, generate_array
from rsgen_qgis.core.errors import ModelPackageError
from rsgen_qgis.core.geo.geotiff import read_tags
from rsgen_qgis.core.request import GenerationRequest
from rsgen_qgis.core.runtime.models import load
from rsgen_qgis.training.prompt_bank import attach, phrases


class _Text:
    """A text encoder that maps known phrases to fixed vectors and counts its calls."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def embed(self, texts):
        self.calls += 1
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _model(bank_phrases, table, tau=0.1):
    manifest = {"conditions": {"prompt_bank": {"phrases": bank_phrases, "temperature": tau}}}
    return SimpleNamespace(package=SimpleNamespace(manifest=manifest), text_encoder=_Text(table),
                           lock=threading.Lock(), extra={})


def test_the_prompt_becomes_the_softmax_mixture_of_the_phrases_at_its_norm():
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])  # unequal norms: the mixture uses them as embedded
    m = _model(["houses", "trees"], {"houses": a, "trees": b}, tau=0.1)
    e = np.array([[0.8, 0.6, 0.0]], np.float32) * 3.0  # norm 3, cosine 0.8 to houses and 0.6 to trees
    out, tag = prompt_bank.read(m, e)
    w = np.exp(np.array([0.8, 0.6]) / 0.1)
    w /= w.sum()  # 0.881, 0.119
    mix = w[0] * a + w[1] * b
    np.testing.assert_allclose(out[0], mix * 3.0 / np.linalg.norm(mix), rtol=1e-5)
    assert out.shape == (1, 3) and out.dtype == np.float32
    assert tag == "houses 88%, trees 12%"
    prompt_bank.read(m, e)
    assert m.text_encoder.calls == 1  # the bank is embedded once per loaded model


def test_without_a_bank_or_a_prompt_nothing_changes():
    m = _model(["houses"], {"houses": np.ones(3)})
    m.package.manifest = {"conditions": {}}
    e = np.ones((1, 3), np.float32)
    out, tag = prompt_bank.read(m, e)
    assert out is e and tag == ""
    assert prompt_bank.read(m, None) == (None, "")


def test_the_phrases_are_the_training_words_without_the_fallback():
    p = phrases()
    assert "dense residential area" in p and "farmland" in p and "urban streets" in p
    assert "a town" not in p and len(p) == len(set(p))


@pytest.fixture(scope="module")
def bank_dir(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    dst = root / "rsgen-tiny"
    shutil.copytree(os.path.join(tiny_model_dir, "rsgen-tiny"), dst)
    attach(str(dst), temperature=0.05)
    return str(root)


def _req(tmp_path, prompt, name="p.tif"):
    return GenerationRequest(extent=(453000, 6233600, 453128, 6233728), crs="EPSG:32734", gsd=4.0, prompt=prompt,
                             seed=3, steps=2, guidance=3.0, model="rsgen-tiny", output=str(tmp_path / name))


def test_generation_records_how_the_prompt_was_read(bank_dir, tiny_model_dir, tmp_path):
    res = generate(_req(tmp_path, "dense residential area with trees"), model_dirs=[bank_dir],
                   providers=["CPUExecutionProvider"])
    reading = read_tags(res.path)["prompt_reading"]
    assert reading.count("%") == prompt_bank.LEADING and reading.split(" ")[0] in " ".join(phrases())
    # the bank changes what the denoiser is told, so the image differs from the package without it
    with_bank = generate_array(_req(tmp_path, "dense residential area with trees"), model_dirs=[bank_dir],
                               providers=["CPUExecutionProvider"]).rgb
    plain = generate_array(_req(tmp_path, "dense residential area with trees"), model_dirs=[tiny_model_dir],
                           providers=["CPUExecutionProvider"]).rgb
    assert not np.array_equal(with_bank, plain)
    empty = generate(_req(tmp_path, "", "e.tif"), model_dirs=[bank_dir], providers=["CPUExecutionProvider"])
    assert "prompt_reading" not in read_tags(empty.path)
    no_bank = generate(_req(tmp_path, "farmland", "n.tif"), model_dirs=[tiny_model_dir],
                       providers=["CPUExecutionProvider"])
    assert "prompt_reading" not in read_tags(no_bank.path)


@pytest.mark.parametrize("bank, message", [
    ({"phrases": [], "temperature": 0.1}, r"prompt_bank.phrases: expected a list of 1 to 4096 items"),
    ({"phrases": ["a\nb"], "temperature": 0.1}, r"prompt_bank.phrases\[0\]: 'a\\nb' is not in the expected form"),
    ({"phrases": ["x" * 201], "temperature": 0.1}, r"prompt_bank.phrases\[0\]"),
    ({"phrases": [3], "temperature": 0.1}, r"prompt_bank.phrases\[0\]: expected text"),
    ({"phrases": ["a"], "temperature": 0}, r"prompt_bank.temperature"),
    ({"phrases": ["a"], "temperature": 5}, r"prompt_bank.temperature"),
    ({"phrases": "a town"}, r"prompt_bank"),
])
def test_hostile_prompt_banks_are_refused(bank_dir, tmp_path, bank, message):
    dst = tmp_path / "pk" / "rsgen-tiny"
    shutil.copytree(os.path.join(bank_dir, "rsgen-tiny"), dst)
    m = json.load(open(dst / "manifest.json"))
    m["conditions"]["prompt_bank"] = bank
    json.dump(m, open(dst / "manifest.json", "w"))
    with pytest.raises(ModelPackageError, match=message):
        load(str(dst), providers=["CPUExecutionProvider"])
