"""Chat VLMs: a tiny SmolVLM of the real classes, loaded as the worker loads it, answers the job's prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from imgsvc.config import Settings
from imgsvc.vision import load_describer
from imgsvc.vision.base import UnsupportedOption
from imgsvc.vision.captioners.capabilities import model_type, options_for
from imgsvc.vision.captioners.chat_vlm import DEFAULT_PROMPT, ChatVLMDescriber


@pytest.fixture(scope="module")
def smolvlm(tiny_smolvlm_dir: Path) -> ChatVLMDescriber:
    describer = load_describer(
        Settings(vision_model=str(tiny_smolvlm_dir), max_answer_tokens=8, device="cpu")
    )
    assert isinstance(describer, ChatVLMDescriber)
    return describer


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (90, 60), (200, 30, 30)), Image.new("L", (40, 80), 90)]


def test_a_released_smolvlm_checkpoint_loads_without_torchvision(smolvlm, tiny_smolvlm_dir):
    # It names SmolVLMProcessor, which cannot be built here; Idefics3's builds the same prompt.
    assert json.loads((tiny_smolvlm_dir / "processor_config.json").read_text())["processor_class"] == (
        "SmolVLMProcessor"
    )
    assert type(smolvlm.processor).__name__ == "Idefics3Processor"
    assert smolvlm.name == str(tiny_smolvlm_dir)


def test_its_tiles_read_large_photos_whole(smolvlm):
    assert smolvlm.input_side is None  # the worker decodes up to MAX_IMAGE_SIDE, not to one tile


def test_the_web_side_knows_it_takes_a_prompt_from_its_config_alone(smolvlm, tiny_smolvlm_dir):
    assert model_type(tiny_smolvlm_dir) == "smolvlm"
    assert options_for("smolvlm") == smolvlm.supported_options == {"prompt", "max_length"}
    with pytest.raises(UnsupportedOption, match="detail"):
        smolvlm.check_options({"detail": "paragraph"})


def test_the_prompt_reaches_the_model_inside_the_chat_template(smolvlm, images):
    question = "How many people are wearing helmets?"
    (ids,) = smolvlm.preprocess(images[:1], question)["input_ids"].tolist()
    text = smolvlm.processor.tokenizer.decode(ids)
    assert "User:<fake_token_around_image>" in text and f"{question}<end_of_utterance>\nAssistant:" in text
    default = smolvlm.processor.tokenizer.decode(
        smolvlm.preprocess(images[:1], DEFAULT_PROMPT)["input_ids"][0]
    )
    assert "one to three sentences" in default


def test_answers_are_the_models_and_change_with_the_prompt(smolvlm, images):
    plain = smolvlm.describe(images)
    asked = smolvlm.describe(images, {"prompt": "What colour is the wall?"})
    assert all(plain) and all(asked)  # nonsense words, but generated
    assert plain != asked


def test_a_left_padded_batch_answers_each_image_as_alone(smolvlm, images):
    # Prompts of different lengths in one batch: the wide image makes more tiles, so more image tokens.
    wide = Image.new("RGB", (200, 40), (10, 120, 10))
    batch = [images[0], wide]
    mask = smolvlm.preprocess(batch, DEFAULT_PROMPT)["attention_mask"]
    assert mask[:, 0].tolist().count(0) == 1 and mask[:, -1].tolist() == [1, 1]  # padded on the left
    assert smolvlm.describe(batch) == [smolvlm.describe([image])[0] for image in batch]


def test_max_length_bounds_the_answer(smolvlm, images):
    short = smolvlm.describe_full(images[:1], {"max_length": 1})[0].text
    assert len(smolvlm.processor.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 2
