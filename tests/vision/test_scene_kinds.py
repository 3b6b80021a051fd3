"""The kind table (ImageNet classes grouped by WordNet's hypernyms) and the kinds a sentence may name."""

from __future__ import annotations

import pytest

from imgsvc.vision.base import Tag
from imgsvc.vision.classifier.describer import imagenet_labels
from imgsvc.vision.scene.kinds import KIND_RANK, Kind, best_kind, imagenet_kinds, kind_masses
from imgsvc.vision.scene.sentences import Evidence, compose_scene


def test_kind_table_covers_every_class():
    assert set(imagenet_kinds()) == set(imagenet_labels())


def test_every_row_lists_its_kinds_most_specific_first():
    for label, kinds in imagenet_kinds().items():
        assert list(kinds) == sorted(kinds, key=KIND_RANK.__getitem__), label


@pytest.mark.parametrize(
    ("labels", "kind"),
    [
        (["daisy", "yellow lady's slipper"], "flower"),
        (["church", "palace", "monastery", "boathouse", "library", "cinema", "castle", "beacon"], "building"),
        (["bakery", "toyshop", "bookshop"], "shop"),
        (["orange", "lemon", "Granny Smith", "fig", "pomegranate"], "fruit"),
        (["tabby", "lion"], "cat"),
        (["goldfish", "tench"], "fish"),
        (["steel arch bridge", "suspension bridge"], "bridge"),
        (["agaric", "bolete"], "mushroom"),
        (["pot"], "plant"),  # ImageNet's pot is the flowerpot
    ],
)
def test_classes_group_under_the_kind_their_photos_show(labels, kind):
    assert {imagenet_kinds()[label][0] for label in labels} == {kind}


def test_shops_are_buildings_and_flowers_plants():
    assert imagenet_kinds()["bakery"] == ("shop", "building", "structure")
    assert imagenet_kinds()["daisy"] == ("flower", "plant")


def test_a_label_imagenet_uses_twice_keeps_only_what_both_share():
    assert imagenet_kinds()["crane"] == ()  # the bird or the machine


def test_masses_sum_over_a_kind_and_each_broader_kind():
    masses = kind_masses([Tag("church", 0.2), Tag("palace", 0.15), Tag("bakery", 0.1), Tag("tripod", 0.3)])
    assert masses["building"] == pytest.approx(0.45) and masses["shop"] == pytest.approx(0.1)
    assert "tripod" not in masses


def test_many_buildings_none_sure_make_a_sure_building():
    tags = [Tag("church", 0.2), Tag("palace", 0.18), Tag("monastery", 0.12), Tag("tripod", 0.05)]
    assert best_kind(tags) == Kind("building", 0.5, True)


def test_a_fair_narrow_kind_is_a_guess():
    assert best_kind([Tag("rapeseed", 0.32), Tag("worm fence", 0.12)]) == Kind("flower", 0.32, False)


def test_bees_and_butterflies_count_toward_the_flower_they_sit_on():
    # A marigold: the classifier spreads over the pollinators ImageNet photographs on flowers.
    tags = [Tag("sulphur butterfly", 0.28), Tag("daisy", 0.2), Tag("bee", 0.11), Tag("monarch", 0.06)]
    assert best_kind(tags) == Kind("flower", 0.65, True)
    # Without a flower in sight they stay insects.
    assert best_kind([Tag("bee", 0.3), Tag("sulphur butterfly", 0.3)]).noun == "insect"


def test_broad_kinds_are_said_only_when_sure():
    # Dune grass: a spread of unlike animals is noise, not "what may be an animal".
    spread = [Tag("red fox", 0.1), Tag("porcupine", 0.1), Tag("bittern", 0.05), Tag("coyote", 0.05)]
    assert best_kind(spread) is None
    sure = [Tag("red fox", 0.2), Tag("porcupine", 0.2), Tag("bittern", 0.1), Tag("coyote", 0.1)]
    assert best_kind(sure) == Kind("animal", 0.5, True)  # the mammals among them


def test_clothing_and_structures_are_never_said_alone():
    assert best_kind([Tag("jean", 0.4), Tag("cardigan", 0.3)]) is None
    assert best_kind([Tag("picket fence", 0.4), Tag("stone wall", 0.3)]) is None


def test_a_broad_kind_needs_its_mass_concentrated():
    # A leaf or green wallpaper: the classifier spreads over the animals ImageNet photographs on
    # leaves. Summed they pass SURE_KIND, but no class holds much of it: no sure "animal", at most
    # a hedged guess at the narrow kind with the most of it.
    leafy = ["vine snake", "green mamba", "green snake", "tree frog", "ladybug", "cricket"]
    leafy += ["walking stick", "mantis", "leafhopper", "lacewing"]
    spread = [Tag(label, 0.06) for label in leafy]
    assert best_kind(spread) == Kind("insect", 0.36, False)
    assert compose_scene(Evidence(people=[], wide_tags=spread)) == "A photo of what may be an insect."
    # A real animal's mass sits on a few classes (scikit-image's cat beside coffee: tiger cat 0.30 of 0.55).
    cat = [Tag("tiger cat", 0.3), Tag("Egyptian cat", 0.14), Tag("tabby", 0.09), Tag("lynx", 0.02)]
    assert best_kind(cat) == Kind("cat", 0.55, True)
    lynx_and_fox = [Tag("lynx", 0.3), Tag("red fox", 0.25)]
    assert best_kind(lynx_and_fox) == Kind("animal", 0.55, True)


def test_mammals_the_classifier_cannot_place_are_an_animal_however_spread():
    # GCompris's red squirrel on a trunk: no class holds a third of "mammal", but fur is not a
    # texture: it is an animal.
    squirrel = [Tag("spider monkey", 0.2), Tag("fox squirrel", 0.14), Tag("squirrel monkey", 0.09)]
    squirrel += [Tag("titi", 0.07), Tag("langur", 0.03), Tag("marmot", 0.03), Tag("weasel", 0.03)]
    squirrel += [Tag("gibbon", 0.03), Tag("howler monkey", 0.03), Tag("capuchin", 0.02)]
    assert best_kind(squirrel) == Kind("animal", 0.67, True)
    assert compose_scene(Evidence(people=[], wide_tags=squirrel)) == "A photo of an animal."


def test_a_narrow_kind_holding_most_of_a_sure_broad_one_is_guessed_instead():
    # A GCompris fish among coral: "animal" 0.54 is sure, "fish" 0.43 of it is not; the fish says more.
    fish = [Tag("goldfish", 0.27), Tag("coral reef", 0.15), Tag("rock beauty", 0.1), Tag("tench", 0.06)]
    fish += [Tag("sea slug", 0.05), Tag("axolotl", 0.04)]
    assert best_kind(fish) == Kind("fish", 0.43, sure=False)
    assert compose_scene(Evidence(people=[], tags=fish, wide_tags=fish)) == "A photo of what may be a fish."
    # Half a plant's mass in flowers is no reason to guess the flower: sure beats specific.
    plant = [Tag("daisy", 0.25), Tag("pot", 0.3)]
    assert best_kind(plant) == Kind("plant", 0.55, sure=True)


def test_furniture_and_devices_are_said_as_a_reader_would():
    chairs = [Tag("folding chair", 0.3), Tag("rocking chair", 0.2), Tag("dining table", 0.15)]
    assert (
        compose_scene(Evidence(people=[], tags=chairs, wide_tags=chairs))
        == "A photo of a piece of furniture."
    )
    meter = [Tag("CD player", 0.33), Tag("modem", 0.12), Tag("tape player", 0.08)]
    assert (
        compose_scene(Evidence(people=[], tags=meter, wide_tags=meter)) == "A photo of an electronic device."
    )
