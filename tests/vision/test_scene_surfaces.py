"""Sky and grass where nothing else is named, and a book told by its cover: the rules, then the models.

The images are built here: a smooth blue sky over textured ground, a lawn filling the frame, and
the flat or all-blue frames that must not pass for either.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from imgsvc.vision.base import Box, Detection, Tag, TextLine
from imgsvc.vision.scene.describer import SceneDescriber
from imgsvc.vision.scene.sentences import Evidence, compose_scene
from imgsvc.vision.scene.surfaces import GRASS, GREENERY, SKY, surfaces

SIZE = 256


def sky(rows: int) -> np.ndarray:
    """A clear sky: blue, lighter towards the horizon, smooth but for a camera's noise."""
    fade = np.linspace(0.0, 1.0, rows)[:, None, None]
    top, horizon = np.array([60, 110, 200]), np.array([150, 190, 235])
    noise = np.random.default_rng(0).normal(0.0, 3.0, (rows, SIZE, 3))
    return top + fade * (horizon - top) + noise


def ground(rows: int, colour: tuple[int, int, int]) -> np.ndarray:
    """scikit-image's grass texture (a grey photo of blades) in one colour."""
    grass = Image.fromarray(data.grass()).resize((SIZE, rows))
    return np.asarray(grass, dtype=np.float32)[..., None] / 255.0 * np.array(colour)[None, None, :]


def road(rows: int) -> np.ndarray:
    """scikit-image's gravel, darkened: a road or a path, grey."""
    gravel = Image.fromarray(data.gravel()).resize((SIZE, rows))
    return np.asarray(gravel, dtype=np.float32)[..., None].repeat(3, axis=2) * 0.5


def picture(*bands: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.concatenate(bands), 0, 255).astype(np.uint8))


LAWN = picture(ground(SIZE, (90, 190, 50)))
SKY_OVER_ROAD = picture(sky(SIZE // 2), road(SIZE // 2))
SKY_OVER_DRY_GRASS = picture(sky(SIZE // 2), ground(SIZE // 2, (220, 180, 80)))


def test_a_lawn_filling_the_frame_is_greenery():
    assert surfaces(LAWN, []) == (GREENERY,)


def test_sky_is_smooth_blue_across_the_top_that_ends_below():
    assert surfaces(SKY_OVER_ROAD, []) == (SKY,)
    all_blue = picture(sky(SIZE))  # a blue wallpaper, a splash of water: no ground below
    assert surfaces(all_blue, []) == ()
    upside_down = picture(road(SIZE // 2), sky(SIZE // 2))
    assert surfaces(upside_down, []) == ()


def test_a_field_needs_the_classifiers_field_classes_and_its_colour_below():
    field = [Tag("ear", 0.22), Tag("red fox", 0.04), Tag("hay", 0.03)]
    assert surfaces(SKY_OVER_DRY_GRASS, field) == (GRASS, SKY)
    assert surfaces(SKY_OVER_DRY_GRASS, [Tag("red fox", 0.2)]) == (SKY,)
    assert surfaces(SKY_OVER_ROAD, field) == (SKY,)  # grey asphalt is no field, whatever the tags


def test_flat_green_and_photos_of_things_are_no_surface():
    assert surfaces(Image.new("RGB", (SIZE, SIZE), (70, 170, 40)), []) == ()  # a green wall
    for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.grass()):
        assert surfaces(Image.fromarray(photo).convert("RGB"), []) == ()


# --- in the sentence --------------------------------------------------------------------------------


def test_surfaces_are_said_where_nothing_else_is():
    assert (
        compose_scene(Evidence(people=[], surfaces=[GREENERY])) == "A photo of what may be grass or leaves."
    )
    assert (
        compose_scene(Evidence(people=[], surfaces=[GRASS, SKY]))
        == "A photo of the sky over what may be grass."
    )
    assert (
        compose_scene(Evidence(people=[], surfaces=[SKY]))
        == "A photo of the sky, with no clearly recognisable subject."
    )
    assert compose_scene(Evidence(people=[], surfaces=[])) == "An image with no clearly recognisable subject."


def test_a_sure_subject_or_a_sign_comes_before_the_view():
    assert (
        compose_scene(Evidence(people=[], tags=[Tag("daisy", 0.9)], surfaces=[SKY])) == "A photo of a daisy."
    )
    sign = [TextLine("FOSTER'S", 0.97)]
    assert (
        compose_scene(Evidence(people=[], lines=sign, surfaces=[SKY]))
        == "A photo of a sign that reads 'FOSTER'S'."
    )


def test_evidence_round_trips_its_surfaces():
    assert Evidence.from_json(Evidence(surfaces=[SKY]).to_json()).surfaces == [SKY]
    assert Evidence.from_json(Evidence().to_json()).surfaces is None


# --- a book's cover ---------------------------------------------------------------------------------

BOOK = Detection("book", 0.3, Box(0.17, 0.28, 0.43, 0.84))
COVER = [[Tag("carton", 0.12), Tag("mousetrap", 0.07), Tag("packet", 0.07)]]
TITLE = [TextLine("LetUsC", 0.93), TextLine("BASIC", 0.99), TextLine("ELECTRONICS", 0.95)]


def test_a_weak_book_box_with_words_on_it_is_a_guessed_book_with_its_text():
    evidence = Evidence(people=[], objects=[BOOK], object_tags=COVER, tags=COVER[0], lines=TITLE)
    assert (
        compose_scene(evidence) == "A photo of what may be a book with the text 'LetUsC BASIC ELECTRONICS'."
    )


def test_without_words_a_weak_book_box_is_not_said():
    evidence = Evidence(people=[], objects=[BOOK], object_tags=COVER, tags=COVER[0], lines=[])
    assert compose_scene(evidence) == "An image with no clearly recognisable subject."
    specks = [TextLine("M6", 0.99)]  # not plainly a word: no evidence of print
    evidence = Evidence(people=[], objects=[BOOK], object_tags=COVER, tags=COVER[0], lines=specks)
    assert "book" not in compose_scene(evidence)


# --- with the real models -----------------------------------------------------------------------------


@pytest.fixture()
def scene(scene_describer: SceneDescriber) -> SceneDescriber:
    return scene_describer


def test_the_describer_says_the_sky_and_the_lawn(scene: SceneDescriber):
    assert scene.describe([SKY_OVER_ROAD, LAWN]) == [
        "A photo of the sky, with no clearly recognisable subject.",
        "A photo of what may be grass or leaves.",
    ]


def test_a_book_box_is_confirmed_by_the_classes_imagenet_shows_books_as():
    # ImageNet has no "book": its book photos are of jackets and bindings.
    covers = [[Tag("book jacket", 0.24), Tag("binder", 0.19), Tag("packet", 0.16)]]
    evidence = Evidence(people=[], objects=[BOOK], object_tags=covers, tags=COVER[0], lines=[])
    assert compose_scene(evidence) == "A photo of a book."
    evidence = Evidence(people=[], objects=[BOOK], object_tags=covers, tags=COVER[0], lines=TITLE)
    assert compose_scene(evidence) == "A photo of a book with the text 'LetUsC BASIC ELECTRONICS'."
