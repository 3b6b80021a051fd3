"""The scene describer with its real models: key facts on the quality set, and running without parts.

The wording rules are tested on recorded evidence in test_scene_sentences.py; here the models run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bench.quality import CASES, shrunk
from imgsvc.config import Settings
from imgsvc.vision import load_describer, resolve_model
from imgsvc.vision.base import Box, Detection, Tag
from imgsvc.vision.scene.describer import SceneDescriber, is_greyscale, needs_crop

PHOTOS = {case.name: case.image for case in CASES}
ALL = "builtin:scene(ssdlite-person,centernet,blazeface,emotion,efficientnet-lite0,rapidocr)"


@pytest.fixture()
def scene(scene_describer: SceneDescriber) -> SceneDescriber:
    return scene_describer


def test_builtin_is_the_scene_describer_with_every_component(models_dir: Path):
    settings = Settings(vision_model="builtin", models_dir=models_dir)
    assert resolve_model(settings) == "builtin:scene"
    describer = load_describer(settings)
    assert isinstance(describer, SceneDescriber)
    assert describer.name == ALL and describer.missing == ()


def test_people_are_counted_on_the_composites(scene: SceneDescriber):
    names = ["astronaut", "two people", "three people", "two astronauts"]
    results = scene.describe_full([PHOTOS[name]() for name in names])
    assert [r.people.count for r in results] == [1, 2, 3, 2]
    assert [r.people.smiling for r in results] == [1, 1, 2, 2]
    texts = [r.text for r in results]
    assert "person" in texts[0] and "bobsled" not in texts[0]
    assert "two people" in texts[1] and "three people" in texts[2] and "two smiling people" in texts[3]
    assert all(len(r.people.faces) <= r.people.count for r in results)  # faces only inside people


def test_objects_carry_the_arbitrated_label_and_a_normalised_box(scene: SceneDescriber):
    (cat, pair) = scene.describe_full([PHOTOS["chelsea"](), PHOTOS["cat and motorcycle"]()])
    assert "cat" in cat.text and "dog" not in cat.text
    assert [o.label for o in cat.objects] == ["cat"]
    assert pair.text == "A photo of a cat to the left of a motorcycle."
    cat_box, motorcycle_box = (o.box for o in pair.objects)
    assert cat_box.x2 < 0.5 < motorcycle_box.x1  # the cat is on the left half, the motorcycle on the right
    assert all(0 <= v <= 1 for o in pair.objects for v in (o.box.x1, o.box.y1, o.box.x2, o.box.y2))
    assert pair.people.count == 0 and cat.people.faces == []  # BlazeFace fires on the cat's face


def test_no_confident_wrong_noun_on_photos_without_a_clear_subject(scene: SceneDescriber):
    texts = scene.describe([PHOTOS[name]() for name in ("rocket", "moon", "coins")])
    for text, wrong in zip(texts, ("drilling platform", "nematode", "golf ball"), strict=True):
        assert wrong not in text and "no clearly recognisable subject" in text


def test_on_a_thumbnail_the_cat_is_a_guess(scene: SceneDescriber):
    small, larger = scene.describe_full([shrunk(PHOTOS["chelsea"](), side) for side in (127, 128)])
    assert (small.text, small.objects) == ("A photo of what may be a cat.", [])
    assert larger.text == "A photo of a cat." and [o.label for o in larger.objects] == ["cat"]


def test_a_page_is_still_read(scene: SceneDescriber):
    (page,) = scene.describe_full([PHOTOS["page"]()])
    assert page.text.startswith("A document with the text: 'Region") and page.lines


def test_batch_keeps_order(scene: SceneDescriber):
    names = ["chelsea", "page"]
    assert scene.describe([PHOTOS[n]() for n in names]) == [scene.describe([PHOTOS[n]()])[0] for n in names]
    assert scene.describe_full([]) == []


def test_models_that_cannot_change_the_sentence_are_not_run(
    scene: SceneDescriber, monkeypatch: pytest.MonkeyPatch
):
    # Cost: no person detector where CenterNet has no hint of a person, no face detector where
    # nobody was found; the sentences are what they were with every model run.
    calls: list[tuple[str, int]] = []
    for slot in ("person", "faces"):
        detector = getattr(scene.detectors, slot)
        real = detector.detect
        monkeypatch.setattr(
            detector, "detect", lambda images, s=slot, f=real: calls.append((s, len(images))) or f(images)
        )
    names = ["coffee", "chelsea", "astronaut"]
    texts = scene.describe([PHOTOS[name]() for name in names])
    assert calls == [("person", 1), ("faces", 1)]  # the astronaut only
    assert texts == ["A photo of a cup of coffee.", "A photo of a cat.", "A photo of a smiling person."]


def test_runs_without_missing_detectors_and_says_so_once(models_dir: Path, tmp_path: Path, caplog):
    # Only the pip archive fetched (no npm): the person detector, the classifier; no OCR asked for.
    partial = tmp_path / "models"
    (partial / "ssdlite-person").mkdir(parents=True)
    shutil.copy(models_dir / "ssdlite-person/frozen_inference_graph.pb", partial / "ssdlite-person")
    with caplog.at_level(logging.WARNING, logger="imgsvc.vision"):
        describer = SceneDescriber.load(partial, ocr="off")
    assert describer.name == "builtin:scene(ssdlite-person,efficientnet-lite0)"
    assert describer.missing == ("centernet", "blazeface", "emotion")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "centernet, blazeface, emotion" in warnings[0]
    assert "imgsvc fetch-models" in warnings[0]
    (result,) = describer.describe_full([PHOTOS["two people"]()])
    assert result.people.count == 2 and "two people" in result.text
    assert all(f.emotion is None for f in result.people.faces)


def test_with_no_detector_weights_it_is_the_classifier_and_says_nothing_of_people(tmp_path: Path):
    describer = SceneDescriber.load(tmp_path, ocr="off")
    assert describer.name == "builtin:scene(efficientnet-lite0)"
    (result,) = describer.describe_full([PHOTOS["chelsea"]()])
    assert result.text == "A photo of a cat." and result.people is None and result.objects == []


def test_greyscale_is_told_from_colour():
    assert is_greyscale(PHOTOS["camera"]()) and is_greyscale(PHOTOS["moon"]())
    assert not is_greyscale(PHOTOS["astronaut"]()) and not is_greyscale(PHOTOS["coffee"]())
    grey_with_a_red_dot = PHOTOS["camera"]()
    grey_with_a_red_dot.putpixel((10, 10), (255, 0, 0))
    grey_with_a_red_dot.paste((255, 0, 0), (0, 0, 40, 40))
    assert not is_greyscale(grey_with_a_red_dot)


def test_crops_only_where_the_classifier_could_change_the_wording():
    small = Box(0.1, 0.1, 0.4, 0.5)
    moped = [Tag("moped", 0.46), Tag("motor scooter", 0.33)]
    assert not needs_crop(Detection("motorcycle", 0.5, small), moped)  # the whole photo confirms it
    assert not needs_crop(Detection("person", 0.9, small), moped)
    assert not needs_crop(Detection("dog", 0.47, Box(0, 0, 1, 0.95)), [Tag("Egyptian cat", 0.8)])  # ~ whole
    # A small "dog" in a photo the classifier calls a cat: the crop decides, not the whole photo.
    assert needs_crop(Detection("dog", 0.7, small), [Tag("Egyptian cat", 0.8)])
    assert needs_crop(Detection("umbrella", 0.51, small), [Tag("lampshade", 0.22)])
    # Boxes that share a label are each counted only from their own crop: the whole photo's
    # "orange" confirms one orange, not six slices of citrus.
    oranges = [Tag("orange", 0.5), Tag("lemon", 0.3)]
    assert not needs_crop(Detection("orange", 0.7, small), oranges)
    assert needs_crop(Detection("orange", 0.7, small), oranges, shared=True)
