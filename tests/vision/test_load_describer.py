"""VISION_MODEL: ``auto`` picks what can run here; explicit values are obeyed or fail."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from imgsvc.config import Settings
from imgsvc.vision import DEFAULT_BUILTIN, load_describer, resolve_model
from imgsvc.vision.base import ModelLoadError


def test_auto_falls_back_to_builtin_loudly_when_the_captioner_is_absent(caplog, tmp_path):
    settings = Settings(vision_model="auto", caption_model=str(tmp_path / "no-such-checkpoint"))
    with caplog.at_level(logging.WARNING, logger="imgsvc.vision"):
        assert resolve_model(settings) == DEFAULT_BUILTIN
    assert (
        "built-in offline scene describer builtin:scene" in caplog.text
        and "no-such-checkpoint" in caplog.text
    )


BLIP = "Salesforce/blip-image-captioning-base"


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own: the machine's own cache may hold BLIP."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # huggingface_hub read it at import
    return cache


def test_auto_falls_back_when_a_hub_id_is_not_cached(hf_cache):
    assert resolve_model(Settings(caption_model=BLIP)) == DEFAULT_BUILTIN


def test_auto_picks_a_hub_id_once_the_cache_holds_it(hf_cache, tiny_model_dir):
    """The same cache layout ``imgsvc download-model`` leaves behind, filled with the tiny BLIP."""
    repo = hf_cache / f"models--{BLIP.replace('/', '--')}"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    assert resolve_model(Settings(caption_model=BLIP)) == BLIP


def test_auto_picks_the_captioner_when_its_directory_is_there(tiny_model_dir):
    settings = Settings(vision_model="auto", caption_model=str(tiny_model_dir), max_new_tokens=4)
    assert resolve_model(settings) == str(tiny_model_dir)
    describer = load_describer(settings)
    assert describer.name == str(tiny_model_dir) and type(describer).__name__ == "TransformersCaptioner"


@pytest.mark.parametrize(
    ("spec", "resolved"),
    [
        ("builtin", "builtin:scene"),
        ("builtin:scene", "builtin:scene"),
        # the classifier-only describers the scene describer grew from stay selectable
        ("builtin:efficientnet-lite0", "builtin:efficientnet-lite0"),
        ("builtin:efficientnet-lite2", "builtin:efficientnet-lite2"),
    ],
)
def test_builtin_shorthands(spec, resolved):
    assert resolve_model(Settings(vision_model=spec)) == resolved
    assert DEFAULT_BUILTIN == "builtin:scene"


def test_classifier_only_describer_still_loads():
    describer = load_describer(Settings(vision_model="builtin:efficientnet-lite0", ocr="off"))
    assert describer.name == "builtin:efficientnet-lite0" and describer.components == ("efficientnet-lite0",)


@pytest.mark.parametrize("spec", ["/nonexistent/model/dir", "builtin:efficientnet-b7", "someone/not-a-model"])
def test_explicit_values_never_fall_back(spec, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError):
        load_describer(Settings(vision_model=spec))
