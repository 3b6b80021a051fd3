"""What each captioner family takes per job, known without torch: the web side and the worker agree here.

A checkpoint's family is its ``config.json`` ``model_type``; this table says which per-job options
the describer of that family honours, so the API can refuse a ``prompt`` to a model that takes none
(a 400 at submit) without loading anything. The describers take their ``supported_options`` from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``detail`` -> the Florence-2 task that answers it.
DETAILS = ("brief", "detailed", "paragraph")
#: ``ocr``: ``auto`` reads text where the caption or the objects suggest some.
OCR_MODES = ("auto", "always", "never")
#: The longest ``prompt`` a job may carry, in characters.
MAX_PROMPT_CHARS = 1000

_CAPTION_PREFIX = frozenset({"max_length", "prompt"})  # the prompt is the caption's first words
_FLORENCE2 = frozenset({"max_length", "detail", "ocr"})
_CHAT = frozenset({"max_length", "prompt"})  # the prompt is a question or an instruction

#: Per-job options by ``model_type``.
OPTIONS_BY_MODEL_TYPE: dict[str, frozenset[str]] = {
    "blip": _CAPTION_PREFIX,
    "git": _CAPTION_PREFIX,
    "vision-encoder-decoder": _CAPTION_PREFIX,
    "florence2": _FLORENCE2,
    "idefics3": _CHAT,
    "smolvlm": _CHAT,
    "qwen2_5_vl": _CHAT,
    "qwen3_vl": _CHAT,
}
#: The chat VLMs: a prompt is answered, not continued.
CHAT_MODEL_TYPES = frozenset({"idefics3", "smolvlm", "qwen2_5_vl", "qwen3_vl"})


def model_type(directory: str | Path) -> str | None:
    """The ``model_type`` in a checkpoint directory's config.json; None when there is none to read."""
    value = _config(directory).get("model_type")
    return value if isinstance(value, str) else None


def needs_remote_code(directory: str | Path) -> bool:
    """The checkpoint ships its own modeling code (``auto_map``), which this service never runs.

    ``microsoft/Florence-2-*`` are such: their ``model_type`` is ``florence2`` but their weights are laid
    out for their own code; ``florence-community/Florence-2-*`` hold them for transformers' classes.
    """
    return "auto_map" in _config(directory)


def _config(directory: str | Path) -> dict:
    try:
        config = json.loads((Path(directory) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def options_for(model_type_name: str | None) -> frozenset[str]:
    """The per-job options a family honours; none for a family this service does not know."""
    return OPTIONS_BY_MODEL_TYPE.get(model_type_name or "", frozenset())


def square_side(image_processor: Any) -> int | None:
    """The side an image processor squeezes every image to (``size`` with height and width, or a
    shortest edge that is then cropped square), or None where it keeps more (tiles, longest edge).

    ``size`` is a dict in older processors and a ``SizeDict`` (attributes) in newer ones.
    """
    size = getattr(image_processor, "size", None)
    if size is None or not getattr(image_processor, "do_resize", True):
        return None

    def get(key: str) -> int | None:
        value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
        return value if isinstance(value, int) and value > 0 else None

    height, width, shortest, longest = get("height"), get("width"), get("shortest_edge"), get("longest_edge")
    if height and width:
        return max(height, width)
    if shortest and not longest:
        return shortest
    return None
