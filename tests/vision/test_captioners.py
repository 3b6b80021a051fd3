"""The transformers captioner, loaded from tiny random-weight checkpoints through the production path."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from PIL import Image

from imgsvc.vision.base import ModelLoadError, UnsupportedOption
from imgsvc.vision.captioners.captioner import TransformersCaptioner, _resolve_dtype
from imgsvc.vision.captioners.hub import download_model, weights_available
from imgsvc.vision.testing_utils import FAMILIES, build_tiny_model


@pytest.fixture(scope="session", params=FAMILIES)
def family_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """One tiny checkpoint per family; BLIP is the shared ``tiny_model_dir``."""
    family = request.param
    if family == "blip":
        return family, request.getfixturevalue("tiny_model_dir")
    return family, build_tiny_model(family, tmp_path_factory.mktemp("models") / family)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    noise = Image.effect_noise((64, 48), 80).convert("RGB")
    return [noise, Image.new("RGB", (100, 30), (200, 10, 10)), Image.new("RGB", (30, 90), (10, 10, 200))]


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_describes_a_batch_with_every_family(
    family_model: tuple[str, Path], images: list[Image.Image]
) -> None:
    family, path = family_model
    captioner = TransformersCaptioner.load(str(path), device="cpu", max_new_tokens=6, min_new_tokens=6)

    texts = captioner.describe(images)

    assert captioner.family == family
    assert captioner.name == str(path)
    assert captioner.input_side == 32  # its processor squeezes every image to 32x32: decode no larger
    assert len(texts) == len(images)
    assert all(isinstance(text, str) and text for text in texts)
    assert captioner.describe(images) == texts, "same input, same output"
    assert [captioner.describe([image])[0] for image in images] == texts, "batching changes nothing"
    assert len(set(texts)) > 1, "the image reaches the decoder"
    assert captioner.describe([]) == []


def test_describe_full_returns_descriptions(tiny_model_dir: Path, images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(str(tiny_model_dir), max_new_tokens=4)

    descriptions = captioner.describe_full(images[:2])

    assert [d.text for d in descriptions] == captioner.describe(images[:2])
    assert all(d.tags is None and d.lines is None for d in descriptions)


def test_pipeline_steps_take_a_batch(tiny_model_dir: Path, images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(str(tiny_model_dir), max_new_tokens=5, min_new_tokens=5)

    inputs = captioner.preprocess(images)
    token_ids = captioner.generate(inputs)

    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    assert token_ids.shape[0] == 3
    assert captioner.decode(token_ids) == captioner.describe(images)


def test_max_length_option_bounds_the_caption(tiny_model_dir: Path, images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(str(tiny_model_dir), max_new_tokens=8, min_new_tokens=8)

    short = captioner.describe(images, {"max_length": 3})

    assert all(0 < len(text.split()) <= 3 for text in short)
    assert [text.split()[:3] for text in captioner.describe(images)] == [text.split() for text in short]


def test_prompt_option_starts_the_caption(family_model: tuple[str, Path], images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(str(family_model[1]), max_new_tokens=4, min_new_tokens=4)

    texts = captioner.describe(images[:2], {"prompt": "a picture of"})

    assert all(text.startswith("a picture of ") for text in texts)


def test_unsupported_option_is_refused(tiny_model_dir: Path, images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(str(tiny_model_dir))

    assert captioner.supported_options == {"max_length", "prompt"}
    with pytest.raises(UnsupportedOption, match="colour"):
        captioner.describe(images, {"colour": "red"})


def test_family_comes_from_the_config_not_the_name(tmp_path: Path, images: list[Image.Image]) -> None:
    path = build_tiny_model("blip", tmp_path / "vit-gpt2-image-captioning")

    captioner = TransformersCaptioner.load(str(path), max_new_tokens=4)

    assert captioner.family == "blip"
    assert len(captioner.describe(images[:1])) == 1


def test_int8_quantization_on_cpu(tiny_model_dir: Path, images: list[Image.Image]) -> None:
    captioner = TransformersCaptioner.load(
        str(tiny_model_dir), device="cpu", quantize="int8", max_new_tokens=4
    )

    texts = captioner.describe(images)

    assert len(texts) == len(images) and all(isinstance(text, str) for text in texts)
    assert not any(type(m) is torch.nn.Linear for m in captioner.model.modules()), "every Linear is quantized"


def test_half_precision_stays_off_the_cpu(tiny_model_dir: Path) -> None:
    captioner = TransformersCaptioner.load(str(tiny_model_dir), device="cpu", dtype="float16")

    assert captioner.dtype == torch.float32
    assert next(captioner.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize(("device", "expected"), [("cuda", torch.float16), ("cpu", torch.float32)])
def test_auto_precision_is_half_on_a_gpu_only(device: str, expected: torch.dtype) -> None:
    assert _resolve_dtype("auto", torch.device(device)) == expected


def test_the_worker_passes_its_dtype_setting_to_the_captioner(tiny_model_dir: Path) -> None:
    from imgsvc.config import Settings
    from imgsvc.vision import load_describer

    settings = Settings(vision_model=str(tiny_model_dir), device="cpu", dtype="float8-is-not-one")

    with pytest.raises(ModelLoadError, match="unknown dtype 'float8-is-not-one'"):
        load_describer(settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dtype": "float8"}, "unknown dtype"), ({"quantize": "int4"}, "unknown quantization")],
)
def test_bad_options_are_load_errors(tiny_model_dir: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        TransformersCaptioner.load(str(tiny_model_dir), device="cpu", **kwargs)


def test_unknown_model_type_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-family"}))

    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        TransformersCaptioner.load(str(tmp_path))


def test_known_but_unsupported_family_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))

    with pytest.raises(ModelLoadError, match="'bert', not a supported captioner"):
        TransformersCaptioner.load(str(tmp_path))


def test_missing_weights_are_a_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = shutil.copytree(
        tiny_model_dir, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors")
    )

    assert not weights_available(str(path))
    with pytest.raises(ModelLoadError, match="no-weights"):
        TransformersCaptioner.load(str(path))


def test_missing_directory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        TransformersCaptioner.load(str(tmp_path / "missing"))


@pytest.mark.usefixtures("offline")
def test_unknown_hub_id_fails_fast_offline() -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"imgsvc-tests/no-such-model.*not on this machine"):
        TransformersCaptioner.load("imgsvc-tests/no-such-model")
    assert time.perf_counter() - started < 2


def test_local_files_only_never_downloads() -> None:
    with pytest.raises(ModelLoadError, match="downloads are off"):
        TransformersCaptioner.load("imgsvc-tests/no-such-model", local_files_only=True)


def test_weights_available(tiny_model_dir: Path) -> None:
    assert weights_available(str(tiny_model_dir))
    assert not weights_available("imgsvc-tests/no-such-model")
    assert not weights_available("not a repo id!")


def test_hub_id_loads_from_the_local_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images: list[Image.Image]
) -> None:
    """The same layout ``snapshot_download`` leaves behind; the name stays the Hub id."""
    repo = tmp_path / "models--imgsvc-tests--tiny-blip"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert weights_available("imgsvc-tests/tiny-blip")
    captioner = TransformersCaptioner.load("imgsvc-tests/tiny-blip", max_new_tokens=4)

    assert captioner.name == "imgsvc-tests/tiny-blip"
    assert len(captioner.describe(images[:1])) == 1


@pytest.mark.usefixtures("offline")
def test_download_refuses_offline() -> None:
    with pytest.raises(ModelLoadError, match="offline"):
        download_model("imgsvc-tests/no-such-model")


def test_download_fails_fast_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub"):
        download_model("imgsvc-tests/no-such-model", timeout=2)
    assert time.perf_counter() - started < 5
