"""The scene describer's sentences, from plain evidence: no model is loaded here.

Hand-written evidence pins down one rule each; ``test_recorded_photos`` runs the real detectors'
recorded outputs for the sample photos (tests/fixtures/scene_evidence.json) through the same code.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.quality import CASES, misses
from imgsvc.vision.base import Box, Detection, Face, Tag, TextLine
from imgsvc.vision.classifier.describer import imagenet_labels
from imgsvc.vision.scene.sentences import (
    Evidence,
    compose_scene,
    counted,
    fold,
    imagenet_nouns,
    merge_people,
    plural,
    read_scene,
    relation,
)

LEFT, RIGHT, MIDDLE = Box(0.0, 0.1, 0.45, 1.0), Box(0.55, 0.1, 1.0, 1.0), Box(0.3, 0.05, 0.7, 1.0)


def person(box: Box = MIDDLE, score: float = 0.95) -> Detection:
    return Detection("person", score, box)


def face_in(box: Box, emotion: str | None = None, score: float | None = None) -> Face:
    """A face in the top middle of ``box``."""
    w, h = box.x2 - box.x1, box.y2 - box.y1
    face = Box(box.x1 + 0.35 * w, box.y1 + 0.05 * h, box.x1 + 0.65 * w, box.y1 + 0.3 * h)
    return Face(0.9, face, emotion, score)


CAT_TAGS = [Tag("Egyptian cat", 0.77), Tag("tiger cat", 0.10), Tag("tabby", 0.08), Tag("lynx", 0.01)]


# --- the ImageNet noun table ------------------------------------------------------------------


def test_noun_table_covers_every_class_in_the_classifiers_order():
    labels = imagenet_labels()
    assert set(imagenet_nouns()) == set(labels)


@pytest.mark.parametrize(
    ("labels", "noun"),
    [
        (["tabby", "tiger cat", "Egyptian cat", "Persian cat"], "cat"),
        (["sorrel"], "horse"),
        (["Mexican hairless", "Great Dane", "golden retriever"], "dog"),
        (["moped", "motor scooter"], "motorcycle"),
        (["espresso"], "coffee"),
        (["scuba diver", "groom", "ballplayer"], "person"),
        (["cab", "sports car", "jeep"], "car"),
        (["tripod"], "tripod"),  # under no common noun: keeps its own name
    ],
)
def test_imagenet_labels_fold_to_the_noun_a_person_would_use(labels, noun):
    assert {imagenet_nouns()[label][0] for label in labels} == {noun}


def test_folding_sums_the_probabilities_of_one_noun():
    nouns = fold(CAT_TAGS)
    assert list(nouns) == ["cat", "lynx"] and nouns["cat"] == pytest.approx(0.95)


def test_a_label_imagenet_uses_twice_never_overrules_a_detector():
    assert imagenet_nouns()["crane"] == ("crane", None)  # the bird or the machine


# --- people -----------------------------------------------------------------------------------


def test_both_detectors_seeing_one_person_count_once():
    evidence = Evidence(people=[person(MIDDLE, 0.95)], objects=[person(Box(0.28, 0.0, 0.72, 0.98), 0.61)])
    assert len(merge_people(evidence)) == 1


def test_a_group_box_around_two_people_does_not_hide_them():
    evidence = Evidence(people=[person(LEFT), person(RIGHT, 0.57)], objects=[person(Box(0, 0, 1, 1), 0.9)])
    assert merge_people(evidence) == [person(LEFT), person(RIGHT, 0.57)]


def test_the_general_detector_counts_people_when_the_person_detector_is_missing():
    evidence = Evidence(people=None, objects=[person(LEFT, 0.6), person(RIGHT, 0.55)])
    assert compose_scene(evidence) == "A photo of two people side by side."


def test_counts_and_smiles():
    two = Evidence(people=[person(LEFT), person(RIGHT)], faces=[face_in(LEFT, "happy", 0.99), face_in(RIGHT)])
    assert compose_scene(two) == "A photo of two people side by side, one of them smiling."
    thirds = [Box(0.0, 0.1, 0.32, 1.0), Box(0.34, 0.1, 0.66, 1.0), Box(0.68, 0.1, 1.0, 1.0)]
    three = Evidence(people=[person(b) for b in thirds], faces=[face_in(b, "happy", 0.97) for b in thirds])
    assert compose_scene(three) == "A photo of three smiling people side by side."


def test_smiling_only_when_the_emotion_model_is_sure():
    unsure = Evidence(people=[person()], faces=[face_in(MIDDLE, "happy", 0.55)])
    assert compose_scene(unsure) == "A photo of a person."
    sure = Evidence(people=[person()], faces=[face_in(MIDDLE, "happy", 0.99)])
    assert compose_scene(sure) == "A photo of a smiling person."


def test_faces_outside_people_do_not_count():
    # BlazeFace fires on a cat's face and on a cup: neither is inside a person box.
    evidence = Evidence(people=[person(LEFT)], faces=[face_in(LEFT), face_in(RIGHT, "happy", 1.0)])
    scene = read_scene(evidence)
    assert len(scene.people) == 1 and len(scene.faces) == 1 and scene.smiling == 0
    assert compose_scene(Evidence(people=[], faces=[face_in(MIDDLE, "happy", 1.0)])).startswith("An image")


def test_weak_person_boxes_are_not_people():
    assert (
        compose_scene(Evidence(people=[person(score=0.3)]))
        == "An image with no clearly recognisable subject."
    )


# --- objects and the classifier -----------------------------------------------------------------


def test_classifier_renames_a_box_within_its_kind_when_sure():
    # CenterNet said "dog 0.47" on scikit-image's chelsea squeezed to its square input; the classifier: cat.
    evidence = Evidence(
        people=[], objects=[Detection("dog", 0.47, MIDDLE)], object_tags=[CAT_TAGS], tags=CAT_TAGS
    )
    assert compose_scene(evidence) == "A photo of a cat."
    assert read_scene(evidence).objects == [Detection("cat", 0.47, MIDDLE)]


def test_classifier_never_renames_across_kinds():
    cup_tags = [Tag("cup", 0.7), Tag("coffee mug", 0.2)]
    sure = Evidence(objects=[Detection("dog", 0.7, MIDDLE)], object_tags=[cup_tags])
    assert compose_scene(sure) == "A photo of what may be a dog."  # and never "a cup"
    weak = Evidence(objects=[Detection("dog", 0.47, MIDDLE)], object_tags=[cup_tags])
    assert compose_scene(weak) == "An image with no clearly recognisable subject."


def test_a_sure_box_nothing_agrees_with_is_only_a_guess():
    evidence = Evidence(objects=[Detection("bicycle", 0.8, MIDDLE)], object_tags=[[Tag("tripod", 0.5)]])
    assert compose_scene(evidence) == "A photo of what may be a bicycle."
    assert read_scene(evidence).objects == []


def test_a_sure_box_the_classifier_agrees_with_only_on_the_kind_is_named_by_its_kind():
    # A quokka: CenterNet "bear" 0.67; the classifier's crop: some marsupial, not sure which.
    marsupials = [Tag("wombat", 0.3), Tag("wallaby", 0.25), Tag("koala", 0.1)]
    quokka = Evidence(objects=[Detection("bear", 0.67, MIDDLE)], object_tags=[marsupials])
    assert compose_scene(quokka) == "A photo of an animal."
    # Three "orange" boxes on lemon and lime slices: some fruit, not three oranges.
    citrus = [Tag("lemon", 0.45), Tag("orange", 0.05)]
    slices = [Detection("orange", 0.7, Box(0.3 * i, 0.2, 0.3 * i + 0.25, 0.5)) for i in range(3)]
    evidence = Evidence(objects=slices, object_tags=[citrus] * 3)
    assert compose_scene(evidence) == "A photo of some fruit."


def test_counts_come_only_from_boxes_that_stand():
    # A zebra box the crop confirms, a "zebra" box on a giraffe the crop does not: one zebra.
    zebra = [Tag("zebra", 0.9)]
    giraffe = [Tag("ostrich", 0.2), Tag("gazelle", 0.15)]
    boxes = [Detection("zebra", 0.8, LEFT), Detection("zebra", 0.65, RIGHT)]
    text = compose_scene(Evidence(objects=boxes, object_tags=[zebra, giraffe]))
    assert text.startswith("A photo of a zebra") and "two zebras" not in text


def test_a_weak_box_the_classifier_does_not_support_is_dropped():
    # scikit-image's rocket: "clock 0.35"; its retina: "umbrella 0.51".
    rocket = Evidence(objects=[Detection("clock", 0.35, MIDDLE)], object_tags=[[Tag("missile", 0.3)]])
    retina = Evidence(objects=[Detection("umbrella", 0.51, MIDDLE)], object_tags=[[Tag("lampshade", 0.22)]])
    for evidence in (rocket, retina):
        assert compose_scene(evidence) == "An image with no clearly recognisable subject."


def test_a_weak_animal_the_classifier_calls_some_animal_is_a_hedged_guess():
    # scikit-image's horse silhouette: "horse 0.38"; the classifier sees dogs, not sure which.
    dogs = [Tag("Mexican hairless", 0.17), Tag("Great Dane", 0.11), Tag("Doberman", 0.05)]
    evidence = Evidence(objects=[Detection("horse", 0.38, MIDDLE)], object_tags=[dogs], greyscale=True)
    assert compose_scene(evidence) == "A black-and-white photo of what may be a horse."
    assert read_scene(evidence).objects == []  # a guess is not reported as a box


def test_counts_of_objects():
    cups = [Detection("cup", 0.7, Box(0.1 * i, 0.5, 0.1 * i + 0.08, 0.6)) for i in range(3)]
    cup_tags = [[Tag("cup", 0.5)]] * 3
    assert compose_scene(Evidence(objects=cups, object_tags=cup_tags)) == "A photo of three cups."


def test_a_drink_goes_into_its_container():
    # scikit-image's coffee: "cup 0.56" boxed; its crop is "espresso" to the classifier, hardly "cup".
    evidence = Evidence(
        objects=[Detection("cup", 0.56, MIDDLE)],
        object_tags=[[Tag("espresso", 0.94), Tag("coffee mug", 0.011), Tag("cup", 0.009)]],
        tags=[Tag("espresso", 0.9), Tag("cup", 0.03)],
    )
    assert compose_scene(evidence) == "A photo of a cup of coffee."


# --- where things are ---------------------------------------------------------------------------


def test_left_and_right_from_box_centres():
    cat, motorcycle = Box(0.02, 0.4, 0.4, 0.95), Box(0.5, 0.1, 0.98, 0.95)
    evidence = Evidence(
        objects=[Detection("motorcycle", 0.7, motorcycle), Detection("cat", 0.6, cat)],
        object_tags=[[Tag("moped", 0.5)], CAT_TAGS],
    )
    assert compose_scene(evidence) == "A photo of a cat to the left of a motorcycle."


def test_a_person_beside_an_object():
    bike = [[Tag("mountain bike", 0.7)]]
    evidence = Evidence(people=[person(RIGHT)], objects=[Detection("bicycle", 0.8, LEFT)], object_tags=bike)
    assert compose_scene(evidence) == "A photo of a person to the right of a bicycle."
    unconfirmed = Evidence(people=[person(RIGHT)], objects=[Detection("bicycle", 0.8, LEFT)])
    assert compose_scene(unconfirmed) == "A photo of a person with what may be a bicycle."


@pytest.mark.parametrize(
    ("subject", "other", "expected"),
    [
        (Box(0.3, 0.3, 0.6, 0.95), Box(0.1, 0.4, 0.9, 0.8), "in front of"),  # lower edge nearer the camera
        (Box(0.4, 0.1, 0.6, 0.6), Box(0.1, 0.4, 0.9, 0.9), "behind"),  # standing out above, feet hidden
        (Box(0.3, 0.3, 0.6, 0.8), Box(0.1, 0.3, 0.9, 0.8), None),  # overlapping, nothing plain
    ],
)
def test_in_front_and_behind_only_when_the_geometry_says_so(subject, other, expected):
    assert relation(subject, other) == expected


def test_an_unboxed_object_the_classifier_is_sure_of_joins_with():
    # scikit-image's camera: one person, and "tripod 0.95" from the whole image.
    evidence = Evidence(people=[person()], tags=[Tag("tripod", 0.95)], greyscale=True)
    assert compose_scene(evidence) == "A black-and-white photo of a person with a tripod."


def test_a_place_the_classifier_is_sure_of():
    evidence = Evidence(people=[person()], tags=[Tag("seashore", 0.7)])
    assert compose_scene(evidence) == "A photo of a person on a beach."


# --- saying less ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [
        [Tag("bobsled", 0.19), Tag("football helmet", 0.17)],  # the astronaut, classifier alone
        [Tag("drilling platform", 0.56), Tag("missile", 0.06)],  # the rocket
        [Tag("nematode", 0.26), Tag("bubble", 0.18)],  # the moon
    ],
)
def test_an_unsure_classifier_names_nothing(tags):
    assert compose_scene(Evidence(tags=tags)) == "An image with no clearly recognisable subject."


def test_on_a_thumbnail_every_noun_is_a_guess_and_people_still_count():
    # GCompris's 74 px detail of a castle's turret: 0.69 "space shuttle" on the blown-up pixels.
    shuttle = Evidence(tags=[Tag("space shuttle", 0.69), Tag("beacon", 0.02)])
    assert compose_scene(shuttle) == "A photo of a space shuttle."
    small = Evidence(tags=shuttle.tags, small=True)
    assert compose_scene(small) == "A photo of what may be a space shuttle."
    pair = Evidence(
        objects=[Detection("cat", 0.8, LEFT), Detection("motorcycle", 0.8, RIGHT)],
        object_tags=[CAT_TAGS, [Tag("moped", 0.3), Tag("motor scooter", 0.3)]],
        tags=CAT_TAGS,
    )
    assert compose_scene(pair) == "A photo of a cat to the left of a motorcycle."
    small_pair = replace(pair, small=True)
    assert compose_scene(small_pair) == "A photo of what may be a cat and a motorcycle."
    assert read_scene(small_pair).objects == []  # no box is stood by
    # Where it was taken is the whole photo's look, which a thumbnail keeps ("a landscape by a lake").
    beach = Evidence(people=[person(LEFT), person(RIGHT)], tags=[Tag("seashore", 0.7)], small=True)
    assert compose_scene(beach) == "A photo of two people side by side on a beach."
    assert [o.label for o in read_scene(beach).objects] == ["person", "person"]
    # The guess is the one full size would say: beside a person, no unboxed tag the classifier doubts.
    phone = Evidence(people=[person()], tags=[Tag("cellular telephone", 0.7)])
    assert compose_scene(phone) == compose_scene(replace(phone, small=True)) == "A photo of a person."
    band = Evidence(people=[person()], tags=[Tag("tripod", 0.95)], small=True)
    assert compose_scene(band) == "A photo of a person with what may be a tripod."
    unsure = Evidence(objects=[Detection("horse", 0.65, MIDDLE)], object_tags=[[Tag("ox", 0.2)]], small=True)
    assert compose_scene(unsure) == "A photo of what may be a horse."
    assert Evidence.from_json(json.loads(json.dumps(small.to_json()))).small is True
    recorded_before = {k: v for k, v in small.to_json().items() if k != "small"}
    assert Evidence.from_json(recorded_before).small is False  # recorded before the flag: full size


def test_people_are_never_dropped_for_a_weak_classifier():
    evidence = Evidence(people=[person()], tags=[Tag("bobsled", 0.19), Tag("football helmet", 0.17)])
    assert compose_scene(evidence) == "A photo of a person."


def test_black_and_white_without_a_subject():
    assert (
        compose_scene(Evidence(greyscale=True))
        == "A black-and-white image with no clearly recognisable subject."
    )


# --- text ---------------------------------------------------------------------------------------


def test_a_page_is_still_a_document():
    lines = [TextLine("Region-based segmentation of images", 0.95), TextLine("is a classic problem.", 0.9)]
    evidence = Evidence(tags=[Tag("pill bottle", 0.6)], lines=lines, greyscale=True)
    assert (
        compose_scene(evidence)
        == "A document with the text: 'Region-based segmentation of images is a classic problem.'."
    )


def test_text_beside_people_is_quoted():
    evidence = Evidence(people=[person()], lines=[TextLine("STOP", 0.9)])
    assert compose_scene(evidence) == "A photo of a person with a sign that reads 'STOP'."


def test_much_text_is_a_document_only_on_a_page():
    lines = [TextLine("Customer Freephone Private Hire Service", 0.9), TextLine("Call 0800 123 456", 0.9)]
    assert compose_scene(Evidence(lines=lines, page=True)).startswith("A document with the text: 'Customer")
    sign = compose_scene(Evidence(lines=lines, page=False))
    assert sign.startswith("A photo of a sign that reads 'Customer Freephone")
    assert compose_scene(Evidence(lines=lines)).startswith("A document")  # not measured: as before


def test_more_people_at_a_second_look_where_someone_was_found():
    front = [person(Box(0.3, 0.3, 0.6, 0.9), 0.99)]
    back_row = Detection("person", 0.42, Box(0.05, 0.1, 0.25, 0.75))
    speck = Detection("person", 0.4, Box(0.9, 0.0, 0.93, 0.3))  # a sliver at the frame's edge
    assert len(merge_people(Evidence(people=front, objects=[back_row, speck]))) == 2
    assert merge_people(Evidence(people=[], objects=[back_row])) == []  # nobody sure: no second look


#: The card players of the development set's tuning half (insightface's group at a table), as the
#: detectors saw them: SSDLite drew one box (0.96) over the man standing at the back right and the
#: woman seated in front of him; CenterNet drew each of them (0.31, 0.32). Boxes rounded to 0.01.
CARD_PLAYERS = Evidence(
    people=[
        person(Box(0.44, 0.31, 0.76, 0.73), 1.0),
        person(Box(0.28, 0.27, 0.60, 0.73), 1.0),
        person(Box(0.71, 0.16, 0.97, 0.74), 0.96),
        person(Box(0.0, 0.25, 0.27, 0.77), 0.78),
        person(Box(0.52, 0.29, 0.87, 0.74), 0.52),
    ],
    objects=[
        person(Box(0.26, 0.24, 0.54, 0.74), 0.57),
        person(Box(0.47, 0.32, 0.74, 0.72), 0.57),
        person(Box(0.0, 0.25, 0.23, 0.98), 0.53),
        person(Box(0.19, 0.10, 0.37, 0.75), 0.42),
        Detection("dining table", 0.38, Box(0.10, 0.62, 0.97, 1.0)),
        person(Box(0.78, 0.27, 0.99, 0.78), 0.32),
        person(Box(0.68, 0.01, 0.97, 0.62), 0.31),
    ],
    # The table's crop is a toyshop or an altar to the classifier: no word for a table.
    object_tags=[[]] * 4 + [[Tag("toyshop", 0.06), Tag("kimono", 0.04), Tag("altar", 0.03)]] + [[]] * 2,
    tags=[Tag("restaurant", 0.21), Tag("comic book", 0.07), Tag("dining table", 0.05)],
)


def test_one_box_over_two_people_does_not_hide_one_of_them():
    assert len(merge_people(CARD_PLAYERS)) == 6
    # Without CenterNet's second box on that pair, they are one person (each box claims one).
    one_box = Evidence(people=CARD_PLAYERS.people, objects=CARD_PLAYERS.objects[:-1])
    assert len(merge_people(one_box)) == 5


def test_a_table_the_classifier_cannot_confirm_stands_where_people_are_at_it():
    assert compose_scene(CARD_PLAYERS) == "A photo of six people with a table."
    # The same box with nobody at it is dropped: the detector's 0.38 alone is not enough.
    empty = Evidence(people=[], objects=[CARD_PLAYERS.objects[4]], object_tags=[CARD_PLAYERS.object_tags[4]])
    assert compose_scene(empty) == "An image with no clearly recognisable subject."


def test_what_the_people_do_is_kept_apart_from_what_is_with_them():
    smiles = [
        face_in(Box(0.28, 0.27, 0.60, 0.73), "happy", 0.99),
        face_in(Box(0.44, 0.31, 0.76, 0.73), "happy", 0.95),
    ]
    evidence = Evidence(**{**CARD_PLAYERS.__dict__, "faces": smiles})
    assert compose_scene(evidence) == "A photo of six people, two of them smiling, with a table."


def test_a_box_under_the_usual_score_stands_only_where_its_crop_agrees():
    # The round sweets: "sports ball" boxes from 0.2 (centernet.CLASS_THRESHOLDS), the crop a ball.
    ball = Detection("sports ball", 0.21, Box(0.4, 0.4, 0.5, 0.5))
    agreed = Evidence(objects=[ball], object_tags=[[Tag("tennis ball", 0.5), Tag("golf ball", 0.2)]])
    assert compose_scene(agreed) == "A photo of a ball."
    # A cartoon fish's 0.2 "sports ball": the crop mostly sunglasses, never a hedge at that score.
    fish = Evidence(objects=[ball], object_tags=[[Tag("sunglass", 0.4), Tag("tennis ball", 0.05)]])
    assert compose_scene(fish) == "An image with no clearly recognisable subject."


def test_a_weak_person_only_the_specialist_saw_needs_the_other_detector():
    # SSDLite's 0.51 "person" on a honey bee, where CenterNet saw no person.
    bee = Detection("person", 0.51, MIDDLE)
    assert merge_people(Evidence(people=[bee], objects=[])) == []
    agreed = Evidence(people=[bee], objects=[Detection("person", 0.35, MIDDLE)])
    assert len(merge_people(agreed)) == 1


@pytest.mark.parametrize(
    ("noun", "many"),
    [("person", "people"), ("bus", "buses"), ("bench", "benches"), ("sheep", "sheep"), ("pony", "ponies")],
)
def test_plurals(noun, many):
    assert plural(noun) == many


# --- recorded outputs of the real models ---------------------------------------------------------

RECORDED = json.loads((Path(__file__).parent.parent / "fixtures" / "scene_evidence.json").read_text())
EXPECTED = {
    "astronaut": "A photo of a smiling person.",
    "camera": "A black-and-white photo of a person with a tripod.",
    "chelsea": "A photo of a cat.",
    "coffee": "A photo of a cup of coffee.",
    "motorcycle": "A photo of a motorcycle.",
    "horse": "A black-and-white photo of what may be a horse.",
    "rocket": "An image with no clearly recognisable subject.",
    "moon": "A black-and-white image with no clearly recognisable subject.",
    "two people": "A photo of two people side by side, one of them smiling.",
    "three people": "A photo of three people side by side, two of them smiling.",
    "two astronauts": "A photo of two smiling people side by side.",
    "cat and motorcycle": "A photo of a cat to the left of a motorcycle.",
    "person and cat": "A photo of a smiling person to the left of a cat.",
    "person and motorcycle": "A photo of a person to the left of a motorcycle.",
    "cat and coffee": "A photo of a cat with coffee.",  # the table box's crop is espresso 0.9
}
#: Quality-set cases the scene describer still gets wrong (see the README's quality table).
KNOWN_MISSES = {"text"}


def test_every_quality_photo_is_recorded():
    assert set(RECORDED["photos"]) == {case.name for case in CASES}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_photos(name):
    assert compose_scene(Evidence.from_json(RECORDED["photos"][name])) == EXPECTED[name]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_recorded_quality_set(case):
    text = compose_scene(Evidence.from_json(RECORDED["photos"][case.name]))
    assert bool(misses(text, case)) == (case.name in KNOWN_MISSES), text


@pytest.mark.parametrize(("count", "phrase"), [(10, "ten cups"), (11, "11 cups"), (12, "12 cups")])
def test_counts_past_the_number_words_are_written_as_digits(count, phrase):
    """Ten is the last number word; exactly 11 of one thing must not run off their end."""
    assert counted("cup", count) == phrase


def test_boxes_that_share_a_label_count_only_where_their_own_crop_agrees():
    # Citrus slices: CenterNet (COCO's only citrus is "orange") says orange on each. Four crops
    # were looked at; two boxes past the crop budget carry the whole photo's tags.
    whole = [Tag("orange", 0.35), Tag("lemon", 0.3)]
    crops = [
        [Tag("orange", 0.7)],
        [Tag("orange", 0.4), Tag("lemon", 0.3)],
        [Tag("lemon", 0.55), Tag("orange", 0.2)],  # a lemon at heart, not sure enough to rename
        [Tag("lemon", 0.7), Tag("orange", 0.1)],  # sure: a lemon
        whole,
        whole,
    ]
    boxes = [Box(0.1 * i, 0.1, 0.1 * i + 0.1, 0.3) for i in range(6)]
    evidence = Evidence(
        people=[],
        objects=[Detection("orange", 0.7, box) for box in boxes],
        object_tags=crops,
        tags=whole,
    )
    nouns = [t.noun for t in read_scene(evidence).things]
    assert nouns.count("orange") == 2 and nouns.count("lemon") == 1 and nouns.count("fruit") == 3
    text = compose_scene(evidence)
    assert "two oranges" in text and "a lemon" in text and "some fruit" in text, text
    # A lone box is still confirmed by the whole photo (scikit-image's motorcycle, its cat).
    alone = Evidence(people=[], objects=[Detection("orange", 0.7, boxes[0])], object_tags=[whole], tags=whole)
    assert compose_scene(alone) == "A photo of an orange."


def test_food_or_drink_the_classifier_is_sure_of_on_an_unconfirmed_box_is_named():
    # A "dining table" box round a cup on a table: its crop is espresso, so coffee is there.
    cat = Detection("cat", 0.7, Box(0.0, 0.1, 0.5, 1.0))
    table = Detection("dining table", 0.39, Box(0.55, 0.2, 1.0, 0.9))
    cats = [Tag("tiger cat", 0.5), Tag("tabby", 0.3)]

    def said(crop: list[Tag]) -> str:
        evidence = Evidence(people=[], objects=[cat, table], object_tags=[cats, crop], tags=cats)
        return compose_scene(evidence)

    assert said([Tag("espresso", 0.9), Tag("cup", 0.03)]) == "A photo of a cat with coffee."
    assert said([Tag("espresso", 0.4), Tag("cup", 0.03)]) == "A photo of a cat."  # not sure: unsaid
    assert said([Tag("iron", 0.9)]) == "A photo of a cat."  # only food and drink: a table holds them
    dachshund = Detection("dog", 0.45, Box(0.0, 0.1, 0.5, 1.0))
    evidence = Evidence(people=[], objects=[dachshund], object_tags=[[Tag("hotdog", 0.7)]], tags=cats)
    assert compose_scene(evidence) == "A photo of a cat."  # an animal's box holds no food: no "hotdog"


def test_a_weak_animal_box_whose_crop_is_some_other_animal_is_an_animal():
    # A pika: CenterNet "bird" 0.55; its crop is weasel, marmot, squirrel and rabbit, no bird.
    rodents = [Tag("marmot", 0.35), Tag("wood rabbit", 0.17), Tag("fox squirrel", 0.11), Tag("hare", 0.11)]
    pika = Evidence(objects=[Detection("bird", 0.55, MIDDLE)], object_tags=[rodents])
    assert compose_scene(pika) == "A photo of an animal."
    # The same crop on a weak "dog" box with a sure, named animal beside it: that animal twice.
    boxes = [Detection("bird", 0.9, LEFT), Detection("dog", 0.45, RIGHT)]
    evidence = Evidence(objects=boxes, object_tags=[[Tag("goose", 0.9)], rodents])
    assert compose_scene(evidence) == "A photo of a bird."


def test_people_with_nothing_else_sure_are_said_with_the_instruments_they_play():
    # GCompris's Irish folk band: four musicians; cello, bassoon and sax spread "musical instrument"
    # over their classes (0.77 there; 0.64 here, the cello 0.2 of it), none sure alone.
    band = [Tag("cello", 0.2), Tag("bassoon", 0.12), Tag("sax", 0.09), Tag("banjo", 0.06)]
    band += [Tag("violin", 0.06), Tag("acoustic guitar", 0.06), Tag("oboe", 0.05), Tag("stage", 0.12)]
    four = [Detection("person", 0.9, Box(0.25 * i, 0.2, 0.25 * i + 0.2, 0.9)) for i in range(4)]
    evidence = Evidence(people=four, tags=band[:5], wide_tags=band)
    assert compose_scene(evidence) == "A photo of four people side by side with musical instruments."
    solo = Evidence(people=four[:1], tags=band[:5], wide_tags=band)
    assert compose_scene(solo) == "A photo of a person with a musical instrument."
    # Clothing is never what they hold: a sure "clothing" says nothing more.
    suits = [Tag("suit", 0.5), Tag("Windsor tie", 0.2)]
    assert compose_scene(Evidence(people=four[:1], tags=suits, wide_tags=suits)) == "A photo of a person."


def test_a_weak_box_is_not_renamed_to_an_animal_the_photo_has_no_room_for():
    # GCompris's swans, re-encoded as JPEG: a 0.43 "bird" box on a cygnet whose crop is 0.70 "ice
    # bear"; the whole photo is water birds. Not "three birds with a bear".
    birds = [Tag("pelican", 0.32), Tag("flamingo", 0.23), Tag("black swan", 0.11), Tag("goose", 0.06)]
    swans = [Detection("bird", 0.6 - 0.05 * i, Box(0.2 * i, 0.3, 0.2 * i + 0.15, 0.6)) for i in range(3)]
    cygnet = Detection("bird", 0.43, Box(0.7, 0.45, 0.75, 0.6))
    bear = [Tag("ice bear", 0.7), Tag("kuvasz", 0.07)]
    crops = [[Tag("goose", 0.62), Tag("black swan", 0.13)]] * 3 + [bear]
    evidence = Evidence(objects=[*swans, cygnet], object_tags=crops, tags=birds, wide_tags=birds)
    assert compose_scene(evidence) == "A photo of three birds."
    # Where the photo is of the animal the crop names, the weak box is renamed (a cheetah's "bird").
    cheetah = [Tag("cheetah", 0.87), Tag("leopard", 0.05)]
    spotted = Evidence(objects=[Detection("bird", 0.3, MIDDLE)], object_tags=[cheetah], tags=cheetah)
    assert compose_scene(spotted) == "A photo of a cheetah."


def test_weak_boxes_said_as_an_animal_count_nothing():
    rodents = [Tag("marmot", 0.35), Tag("wood rabbit", 0.17), Tag("fox squirrel", 0.11), Tag("hare", 0.11)]
    # Two weak boxes of different labels on one animal: "an animal", not "two animals".
    halves = [Detection("bird", 0.55, LEFT), Detection("cat", 0.4, Box(0.3, 0.1, 0.8, 1.0))]
    assert compose_scene(Evidence(objects=halves, object_tags=[rodents] * 2)) == "A photo of an animal."
    # The whole photo names the animal: the weak box is that animal, not a second one.
    marmot = [Tag("marmot", 0.7), Tag("beaver", 0.05)]
    evidence = Evidence(objects=halves[:1], object_tags=[rodents], tags=marmot, wide_tags=marmot)
    assert compose_scene(evidence) == "A photo of a marmot."
    # A sure box is not weak: the classifier agreeing on the kind names the kind (an existing rule).
    sure = Evidence(objects=[Detection("bird", 0.7, MIDDLE)], object_tags=[rodents])
    assert compose_scene(sure) == "A photo of an animal."


def test_a_sure_box_is_renamed_by_its_crop_whatever_the_whole_photo_says():
    # Room in the whole photo is asked of weak boxes only: a 0.75 "bear" on a gorilla is a gorilla.
    gorilla = [Tag("gorilla", 0.88), Tag("chimpanzee", 0.02)]
    leaves = [Tag("vine snake", 0.3), Tag("green mamba", 0.2)]
    evidence = Evidence(objects=[Detection("bear", 0.75, MIDDLE)], object_tags=[gorilla], wide_tags=leaves)
    assert compose_scene(evidence) == "A photo of a gorilla."


def test_instruments_beside_people_need_a_sure_kind_and_replace_an_unsure_one():
    four = [Detection("person", 0.9, Box(0.25 * i, 0.2, 0.25 * i + 0.2, 0.9)) for i in range(4)]
    # A cello at 0.65 is under the lone object's bar; its kind is sure: the instruments are said.
    cello = [Tag("cello", 0.65), Tag("violin", 0.1)]
    evidence = Evidence(people=four, tags=cello, wide_tags=cello)
    assert compose_scene(evidence) == "A photo of four people side by side with musical instruments."
    # A guess at the kind is not enough.
    faint = [Tag("cello", 0.2), Tag("banjo", 0.1), Tag("stage", 0.3)]
    assert (
        compose_scene(Evidence(people=four, tags=faint, wide_tags=faint))
        == "A photo of four people side by side."
    )
