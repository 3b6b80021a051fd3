"""``VisionEncoderDecoderModel`` checkpoints (ViT-GPT2 style): any image encoder with any text decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgsvc.vision.captioners.family import Family

if TYPE_CHECKING:
    import torch


def load(source: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = VisionEncoderDecoderModel.from_pretrained(source, dtype=dtype, local_files_only=True)
    return model, image_processor, tokenizer


def prompt_inputs(model: Any, tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    # The prompt goes to the decoder, after its start token.
    start = model.generation_config.decoder_start_token_id or model.config.decoder_start_token_id
    return "decoder_input_ids", [start, *ids]


FAMILY = Family("vision-encoder-decoder", load, prompt_inputs)
