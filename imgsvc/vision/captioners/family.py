"""What a model family file provides to :class:`~imgsvc.vision.captioners.captioner.TransformersCaptioner`.

One :class:`Family` per ``model_type`` in a checkpoint's ``config.json``: how to load it with
``from_pretrained`` and how its ``generate()`` wants a prompt laid out. Everything else (device, dtype,
quantization, batching, decoding) is shared and lives in the captioner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: ``(source, dtype) -> (model, image_processor, tokenizer)``, all read with ``local_files_only=True``.
Loader = Callable[[str, "torch.dtype"], tuple[Any, Any, Any]]
#: ``(model, tokenizer, prompt_ids) -> (generate() keyword, ids)``: the prompt as the text's first ids.
PromptLayout = Callable[[Any, Any, list[int]], tuple[str, list[int]]]


@dataclass(frozen=True)
class Family:
    """A captioning model family: its ``config.json`` ``model_type``, loader and prompt layout."""

    model_type: str
    load: Loader
    prompt_inputs: PromptLayout
