"""BLIP (``Salesforce/blip-image-captioning-*``): a ViT encoder and a BERT decoder in one processor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgsvc.vision.captioners.family import Family

if TYPE_CHECKING:
    import torch


def load(source: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(source, local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(source, dtype=dtype, local_files_only=True)
    return model, processor.image_processor, processor.tokenizer


def prompt_inputs(model: Any, tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    # BLIP swaps the first id for its [DEC] bos and drops the last
    return "input_ids", [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]


FAMILY = Family("blip", load, prompt_inputs)
