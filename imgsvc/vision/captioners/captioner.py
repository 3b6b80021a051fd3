"""Captions from a Hugging Face transformers model: BLIP, ViT-GPT2-style encoder-decoders, GIT.

The pipeline every family shares; what differs per family (loader, prompt layout) is in its own
module beside this one (:mod:`.blip`, :mod:`.vision_encoder_decoder`, :mod:`.git`), listed in ``FAMILIES``.

The checkpoint (Hub id or local directory) is loaded once; its family comes from its
``config.json``, never from its name. Loading never waits on the network: weights come
from the directory or the local Hugging Face cache, or a download that fails within seconds.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from imgsvc.vision.base import Describer, Description, ModelLoadError
from imgsvc.vision.captioners import blip, git, vision_encoder_decoder
from imgsvc.vision.captioners.capabilities import (
    CHAT_MODEL_TYPES,
    model_type,
    needs_remote_code,
    options_for,
    square_side,
)
from imgsvc.vision.captioners.family import Family
from imgsvc.vision.captioners.hub import cached_snapshot, download_model, looks_like_path, offline
from imgsvc.vision.devices import resolve_device

log = logging.getLogger("imgsvc.vision.captioners")

#: The families this captioner runs, by ``model_type``: a new family is a module beside this one, listed here.
FAMILIES: dict[str, Family] = {
    family.model_type: family for family in (blip.FAMILY, vision_encoder_decoder.FAMILY, git.FAMILY)
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TransformersCaptioner(Describer):
    """One loaded captioning model; the pipeline steps below each take a whole batch."""

    supported_options = options_for("blip")

    def __init__(
        self,
        name: str,
        family: str,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 30,
        min_new_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.family = family
        self.model = model
        self.image_processor = image_processor
        self.input_side = square_side(image_processor)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: str = "auto",
        max_new_tokens: int = 30,
        min_new_tokens: int | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        local_files_only: bool | None = None,
    ) -> TransformersCaptioner:
        """Load a checkpoint with ``from_pretrained``; any failure is a :class:`ModelLoadError`.

        ``local_files_only``: None uses local weights when present and downloads them
        otherwise; True never touches the network; False refreshes from the Hub first.
        """
        started = time.perf_counter()
        source = _local_source(name_or_path, local_files_only)
        device = resolve_device(device)
        torch_dtype = _resolve_dtype(dtype, device)
        try:
            family = _family(source, name_or_path)
            model, image_processor, tokenizer = FAMILIES[family].load(source, torch_dtype)
            model.to(device).eval()
            model = quantized(model, quantize, device)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... alike
            raise ModelLoadError(f"cannot load captioning model {name_or_path!r}: {exc}") from exc
        log.info(
            "loaded %s captioner %s on %s (%s%s) in %.1fs",
            family,
            name_or_path,
            device,
            str(torch_dtype).removeprefix("torch."),
            f", {quantize}" if quantize else "",
            time.perf_counter() - started,
        )
        return cls(
            name_or_path,
            family,
            model,
            image_processor,
            tokenizer,
            device=device,
            dtype=torch_dtype,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
        )

    def preprocess(self, images: Sequence[Image.Image], prompt: str | None = None) -> dict[str, torch.Tensor]:
        """A batch as model inputs: ``pixel_values``, plus the prompt's token ids when there is one."""
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        pixel_values = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        inputs = {"pixel_values": pixel_values.to(self.device, self.dtype)}
        if prompt:
            inputs |= self._prompt_inputs(prompt, len(rgb))
        return inputs

    def generate(self, inputs: Mapping[str, torch.Tensor], max_new_tokens: int | None = None) -> torch.Tensor:
        """Token ids, one row per image; decoding settings are the checkpoint's own."""
        limits = {"max_new_tokens": max_new_tokens or self.max_new_tokens}
        if self.min_new_tokens is not None:
            limits["min_new_tokens"] = min(self.min_new_tokens, limits["max_new_tokens"])
        with torch.inference_mode():
            return self.model.generate(**inputs, **limits)

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        """Options: ``max_length`` (new tokens) and ``prompt``, which the caption then starts with."""
        options = options or {}
        self.check_options(options)
        if not images:
            return []
        token_ids = self.generate(self.preprocess(images, options.get("prompt")), options.get("max_length"))
        return [Description(text=text) for text in self.decode(token_ids)]

    def _prompt_inputs(self, prompt: str, batch_size: int) -> dict[str, torch.Tensor]:
        """The prompt laid out the way each family's generate() expects its text to begin."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        key, ids = FAMILIES[self.family].prompt_inputs(self.model, self.tokenizer, ids)
        return {key: torch.tensor([ids] * batch_size, device=self.device)}


def load_captioner(
    name_or_path: str,
    device: str = "auto",
    max_new_tokens: int = 30,
    max_answer_tokens: int = 256,
    min_new_tokens: int | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    local_files_only: bool | None = None,
) -> Describer:
    """Any transformers checkpoint this service runs, by its ``config.json`` ``model_type``.

    Florence-2 and the chat VLMs have describers of their own (several tasks per image; a chat
    template); every other family goes through :class:`TransformersCaptioner`.
    """
    source = _local_source(name_or_path, local_files_only)
    kind = model_type(source)
    if kind == "florence2" and needs_remote_code(source):
        raise ModelLoadError(
            f"{name_or_path!r} is Florence-2 for trust_remote_code, which this service does not run; use "
            "the same weights converted for transformers: florence-community/Florence-2-base (or -large)"
        )
    if kind != "florence2" and kind not in CHAT_MODEL_TYPES:
        return TransformersCaptioner.load(
            name_or_path,
            device=device,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            dtype=dtype,
            quantize=quantize,
            local_files_only=local_files_only,
        )
    resolved = resolve_device(device)
    common: dict[str, Any] = {
        "device": resolved,
        "dtype": _resolve_dtype(dtype, resolved),
        "quantize": quantize,
        "max_new_tokens": max_new_tokens,
        "max_answer_tokens": max_answer_tokens,
        "min_new_tokens": min_new_tokens,
    }
    if kind == "florence2":
        from imgsvc.vision.captioners.florence2 import Florence2Describer

        return Florence2Describer.load(name_or_path, source, **common)
    from imgsvc.vision.captioners.chat_vlm import ChatVLMDescriber

    return ChatVLMDescriber.load(name_or_path, source, kind, **common)


def _local_source(name_or_path: str, local_files_only: bool | None) -> str:
    """Where ``from_pretrained`` should read from, made local first so it never waits on the network."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if looks_like_path(name_or_path):
        raise ModelLoadError(f"cannot load captioning model {name_or_path!r}: no such directory")
    snapshot = None if local_files_only is False else cached_snapshot(name_or_path)
    if snapshot is not None:
        return str(snapshot)
    if local_files_only or (local_files_only is None and offline()):
        raise ModelLoadError(
            f"captioning model {name_or_path!r} is not on this machine (no such directory, not in the "
            "Hugging Face cache) and downloads are off; run `imgsvc download-model` with Hub access"
        )
    return download_model(name_or_path)


def _family(source: str, name: str) -> str:
    """The ``model_type`` in config.json: names of directories and repos can lie."""
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(source, local_files_only=True).model_type
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config of captioning model {name!r}: {exc}") from exc
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"model {name!r} is a {model_type!r}, not a supported captioner ({', '.join(FAMILIES)})"
        )
    return model_type


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """``auto``: float16 on CUDA (half the memory traffic, tensor cores), float32 elsewhere."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if DTYPES[dtype] != torch.float32 and device.type != "cuda":
        log.warning("dtype %s is for CUDA only (slow or unsupported on %s): using float32", dtype, device)
        return torch.float32
    return DTYPES[dtype]


def quantized(model: Any, quantize: str | None, device: torch.device) -> Any:
    """int8 dynamic quantization of the Linear layers: smaller and faster on CPU only."""
    if quantize is None:
        return model
    if quantize != "int8":
        raise ModelLoadError(f"unknown quantization {quantize!r}; expected 'int8'")
    if device.type != "cpu":
        log.warning("int8 dynamic quantization runs on CPU only: not applied on %s", device)
        return model
    with warnings.catch_warnings():  # torch.ao is deprecated in favour of torchao but still works
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
