"""Chat VLMs (SmolVLM, Qwen2.5-VL, Qwen3-VL; Apache-2.0): the job's ``prompt`` answered about the image.

``AutoModelForImageTextToText`` and the checkpoint's own chat template: one user turn with the image and
the prompt (by default a request for a one-to-three-sentence description), answered into
``image_description``. A batch is generated together, left-padded so every answer starts at the same
column; each job's answer is cut at ``MAX_ANSWER_TOKENS`` (or its ``max_length``).

SmolVLM's own ``SmolVLMProcessor`` cannot be built without torchvision (its video processor needs it,
and PyPI's torchvision does not import beside the CPU torch pinned here); ``Idefics3Processor`` builds
the same prompt and image tiles for SmolVLM checkpoints, so it is the fallback. With torchvision
installed (a GPU host with matching torch/torchvision wheels), the checkpoint's own processor is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from imgsvc.vision.base import Describer, Description, ModelLoadError
from imgsvc.vision.captioners.capabilities import options_for
from imgsvc.vision.captioners.text import clean_text

log = logging.getLogger("imgsvc.vision.captioners")

DEFAULT_PROMPT = "Describe this image in one to three sentences."
#: Families whose images go to the processor one list per prompt (Idefics3's layout).
_NESTED_IMAGES = frozenset({"idefics3", "smolvlm"})


class ChatVLMDescriber(Describer):
    """A loaded chat VLM: one prompt per batch (jobs are batched by equal options), one answer per image."""

    def __init__(
        self,
        name: str,
        family: str,
        model: Any,
        processor: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_answer_tokens: int = 256,
        min_new_tokens: int | None = None,
    ) -> None:
        self.name = name
        self.family = family
        self.supported_options = options_for(family)
        self.model = model
        self.processor = processor
        processor.tokenizer.padding_side = "left"  # generation continues every row from its last column
        self.device = device
        self.dtype = dtype
        self.max_answer_tokens = max_answer_tokens
        #: Benches fix the token count: compute, not the random weights' whims, is measured.
        self.min_new_tokens = min_new_tokens

    @classmethod
    def load(
        cls,
        name: str,
        source: str,
        family: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        quantize: str | None = None,
        max_answer_tokens: int = 256,
        min_new_tokens: int | None = None,
        **_: Any,
    ) -> ChatVLMDescriber:
        from transformers import AutoModelForImageTextToText

        from imgsvc.vision.captioners.captioner import quantized

        started = time.perf_counter()
        try:
            processor = _processor(source, family)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, local_files_only=True)
            model.to(device).eval()
            model = quantized(model, quantize, device)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... alike
            raise ModelLoadError(f"cannot load chat VLM {name!r}: {exc}") from exc
        log.info("loaded %s chat VLM %s on %s in %.1fs", family, name, device, time.perf_counter() - started)
        return cls(
            name,
            family,
            model,
            processor,
            device=device,
            dtype=dtype,
            max_answer_tokens=max_answer_tokens,
            min_new_tokens=min_new_tokens,
        )

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        """Options: ``prompt`` (a question or an instruction), ``max_length`` (tokens of the answer)."""
        options = options or {}
        self.check_options(options)
        if not images:
            return []
        budget = min(self.max_answer_tokens, options.get("max_length") or self.max_answer_tokens)
        inputs = self.preprocess(images, options.get("prompt") or DEFAULT_PROMPT)
        limits: dict[str, Any] = {"max_new_tokens": budget}
        if self.min_new_tokens is not None:
            limits["min_new_tokens"] = min(self.min_new_tokens, budget)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1, **limits)
        answers = self.processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [Description(text=clean_text(answer)) for answer in answers]

    def preprocess(self, images: Sequence[Image.Image], prompt: str) -> dict[str, torch.Tensor]:
        """The chat template's user turn (the image, then the prompt) for each image, left-padded."""
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(turn, add_generation_prompt=True)
        per_prompt = [[image] for image in rgb] if self.family in _NESTED_IMAGES else rgb
        inputs = self.processor(text=[text] * len(rgb), images=per_prompt, return_tensors="pt", padding=True)
        return {
            key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in inputs.items()
        }


def _processor(source: str, family: str) -> Any:
    """The checkpoint's processor; for SmolVLM without torchvision, ``Idefics3Processor`` (same prompt)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        if family not in _NESTED_IMAGES:
            raise
        from transformers import Idefics3Processor

        log.info("%s's own processor is unavailable (%s); using Idefics3Processor", source, exc)
        return Idefics3Processor.from_pretrained(source, local_files_only=True)
