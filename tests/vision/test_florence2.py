"""Florence-2: the location-token parser on hand-written answers, and a tiny real-class checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgsvc.config import Settings
from imgsvc.vision import load_describer
from imgsvc.vision.base import Box, Detection, UnsupportedOption
from imgsvc.vision.captioners.florence2 import (
    Florence2Describer,
    parse_objects,
    split_pieces,
    suggests_text,
)
from imgsvc.vision.captioners.text import clean_text


def objects(text: str) -> list[Detection]:
    return parse_objects(split_pieces(text))


def test_a_label_and_four_locations_make_one_box_normalised_to_the_image():
    (car,) = objects("</s><s>car<loc_100><loc_200><loc_599><loc_999></s>")
    assert car.label == "car"
    assert car.box == Box(0.1005, 0.2005, 0.5995, 0.9995)
    assert car.score == 1.0


def test_one_label_may_carry_several_boxes_and_each_label_its_own():
    found = objects(
        "person<loc_1><loc_2><loc_3><loc_4><loc_5><loc_6><loc_7><loc_8>dog<loc_9><loc_9><loc_10><loc_10>"
    )
    assert [d.label for d in found] == ["person", "person", "dog"]
    assert found[1].box.x1 == pytest.approx(0.0055)


@pytest.mark.parametrize(
    ("answer", "labels"),
    [
        ("car<loc_1><loc_2><loc_3>", []),  # cut short: no box
        ("car<loc_1><loc_2><loc_3>dog<loc_1><loc_2><loc_3><loc_4>", ["dog"]),  # a short box does not leak
        ("<loc_1><loc_2><loc_3><loc_4>", []),  # a box without a label
        ("car", []),  # a label without a box
        ("", []),
        ("car<loc_><loc_1><loc_2><loc_3><loc_4>", ["car"]),  # not a location: an unknown marker, dropped
        ("car<loc_-1><loc_1><loc_2><loc_3><loc_4>", ["car"]),
        ("a < b<loc_1><loc_2><loc_3><loc_4>", ["a < b"]),  # a lone "<" is text
        ("\x00\x1b[31m<loc_1><loc_2><loc_3><loc_4>", ["[31m"]),  # control characters never reach a label
        ("<od>cat</od><loc_1><loc_2><loc_3><loc_4>", ["cat"]),  # task markers are not text
    ],
)
def test_malformed_answers_cost_only_what_they_spoil(answer, labels):
    assert [d.label for d in objects(answer)] == labels


def test_bins_past_999_and_reversed_corners_still_give_a_box_inside_the_image():
    (box,) = (d.box for d in objects("sign<loc_99999><loc_900><loc_5000><loc_100>"))
    assert (box.x1, box.y1, box.x2, box.y2) == (0.9995, 0.1005, 0.9995, 0.9005)


def test_random_token_soup_never_raises_and_never_leaves_the_image():
    rng = random.Random(0)
    alphabet = [
        "<loc_0>",
        "<loc_999>",
        "<loc_1000>",
        "<loc_123456>",
        "a",
        " dog",
        "<",
        ">",
        "</s>",
        "<pad>",
        "\n",
    ]
    for _ in range(500):
        pieces = [rng.choice(alphabet) for _ in range(rng.randrange(40))]
        for found in (parse_objects(pieces), objects("".join(pieces))):
            for detection in found:
                box = detection.box
                assert 0 <= box.x1 <= box.x2 <= 1 and 0 <= box.y1 <= box.y2 <= 1
                assert detection.label and 0 <= detection.score <= 1


def test_a_runaway_answer_is_capped():
    assert len(objects("x<loc_1><loc_2><loc_3><loc_4>" * 500)) == 50


def test_scores_are_the_mean_probability_of_the_label_and_its_box():
    (found,) = parse_objects(["cat", "<loc_1>", "<loc_2>", "<loc_3>", "<loc_4>"], [0.5, 1, 1, 1, 0.5])
    assert found.score == pytest.approx(0.5 ** (2 / 5))


def test_text_is_read_when_the_caption_or_an_object_names_something_with_text():
    sign = Detection("stop sign", 0.9, Box(0, 0, 1, 1))
    assert suggests_text("A street with a shop.", [sign])
    assert suggests_text("A menu on a table.", [])
    assert not suggests_text("A dog on the grass.", [])


def test_clean_text_keeps_one_printable_line():
    assert clean_text(" a\tb\n\x07c \ufffd d ") == "a b c d"


# -- the tiny checkpoint, loaded through the worker's loader ---------------------------------


@pytest.fixture(scope="module")
def florence(tiny_florence2_dir: Path) -> Florence2Describer:
    describer = load_describer(
        Settings(vision_model=str(tiny_florence2_dir), max_new_tokens=6, max_answer_tokens=12, device="cpu")
    )
    assert isinstance(describer, Florence2Describer)
    return describer


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (90, 60), (200, 30, 30)), Image.new("RGB", (40, 80), (20, 40, 220))]


def test_it_is_loaded_by_its_config_not_its_name_and_says_what_it_takes(florence, tiny_florence2_dir):
    assert florence.name == str(tiny_florence2_dir)
    assert florence.supported_options == {"detail", "ocr", "max_length"}
    assert florence.input_side == 64  # its processor's square: the worker decodes photos no larger
    with pytest.raises(UnsupportedOption, match="prompt"):
        florence.check_options({"prompt": "how many?"})


def test_a_description_has_a_caption_and_objects_inside_the_image(florence, images):
    for description in florence.describe_full(images, {"ocr": "never"}):
        assert description.text  # nonsense words, but the model's own
        assert description.lines is None
        assert isinstance(description.objects, list)
        for found in description.objects:
            assert 0 <= found.box.x1 <= found.box.x2 <= 1 and 0 <= found.box.y1 <= found.box.y2 <= 1


def test_detail_picks_the_task_and_ocr_always_reads_text(florence, images, monkeypatch):
    tasks: list[tuple[str, int]] = []
    run_task = florence.run_task

    def recording(task, features, max_new_tokens):
        tasks.append((task, features.shape[0]))
        return run_task(task, features, max_new_tokens)

    monkeypatch.setattr(florence, "run_task", recording)
    (description,) = florence.describe_full(images[:1], {"detail": "paragraph", "ocr": "always"})
    assert tasks == [("<MORE_DETAILED_CAPTION>", 1), ("<OD>", 1), ("<OCR>", 1)]
    assert isinstance(description.lines, list)
    tasks.clear()
    florence.describe_full(images, {"detail": "detailed", "ocr": "never"})
    assert tasks == [("<DETAILED_CAPTION>", 2), ("<OD>", 2)]


def test_a_batch_describes_each_image_as_alone(florence, images):
    together = florence.describe_full(images, {"ocr": "never"})
    alone = [florence.describe_full([image], {"ocr": "never"})[0] for image in images]
    assert [d.text for d in together] == [d.text for d in alone]


def test_the_shared_image_encoding_generates_what_the_processor_path_does(florence, images):
    inputs = florence.processor(text=["<CAPTION>"] * 2, images=images, return_tensors="pt")
    with torch.inference_mode():
        reference = florence.model.generate(**inputs, max_new_tokens=6, num_beams=1, do_sample=False)
    texts = florence.processor.batch_decode(reference, skip_special_tokens=False)
    ours = florence.describe_full(images, {"ocr": "never", "max_length": 6})
    assert [d.text for d in ours] == [clean_text(split_markers(t)) for t in texts]


def split_markers(text: str) -> str:
    return "".join(
        p for p in split_pieces(text) if not (p.startswith("<") and p.endswith(">") and len(p) > 2)
    )


def test_the_remote_code_checkpoint_is_refused_with_the_name_of_the_native_one(tiny_florence2_dir, tmp_path):
    import json
    import shutil

    from imgsvc.vision.base import ModelLoadError

    remote = shutil.copytree(tiny_florence2_dir, tmp_path / "microsoft-florence")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="florence-community/Florence-2-base"):
        load_describer(Settings(vision_model=str(remote), device="cpu"))
