"""GIT (``microsoft/git-*``): a CLIP image encoder feeding a single causal text decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgsvc.vision.captioners.family import Family

if TYPE_CHECKING:
    import torch


def load(source: str, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from transformers import GitForCausalLM, GitProcessor

    processor = GitProcessor.from_pretrained(source, local_files_only=True)
    model = GitForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
    return model, processor.image_processor, processor.tokenizer


def prompt_inputs(model: Any, tokenizer: Any, ids: list[int]) -> tuple[str, list[int]]:
    return "input_ids", [tokenizer.cls_token_id, *ids]


FAMILY = Family("git", load, prompt_inputs)
