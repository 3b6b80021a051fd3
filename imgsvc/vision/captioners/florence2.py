"""Florence-2 (``florence-community/Florence-2-base``, ``-large``; MIT): caption, objects and text, one model.

One checkpoint answers several tasks, each a short generation over the same image encoding:
``<CAPTION>`` / ``<DETAILED_CAPTION>`` / ``<MORE_DETAILED_CAPTION>`` (the job's ``detail``), ``<OD>``
(objects, as a label followed by four ``<loc_N>`` tokens per box, N in 0..999 of the image's width
or height) and ``<OCR>`` (the text it reads, run when the job's ``ocr`` asks for it). The image
encoder (DaViT, the costly part) runs once per batch and its features feed every task.

The location tokens are parsed here, not by the processor's post-processor: a model's output is
untrusted, and a malformed answer (a box cut short, a bin past 999, a label without a box) must
cost a box, never the job; every box is inside 0..1.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from imgsvc.vision.base import (
    Box,
    Describer,
    Description,
    Detection,
    ModelLoadError,
    TextLine,
    UnsupportedOption,
)
from imgsvc.vision.captioners.capabilities import DETAILS, OCR_MODES, options_for, square_side
from imgsvc.vision.captioners.text import clean_text

log = logging.getLogger("imgsvc.vision.captioners")

#: The job's ``detail`` -> the caption task.
CAPTION_TASKS = dict(
    zip(DETAILS, ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"), strict=True)
)
#: Florence-2 quantises each coordinate into this many bins of the image's width or height.
BINS = 1000
#: At most this many objects per image: a model stuck in a loop must not make a huge result.
MAX_OBJECTS = 50
#: Longest label kept, in characters.
MAX_LABEL = 80
_LOC = re.compile(r"<loc_(\d{1,6})>")
_MARKER = re.compile(r"<[^<>\s]{1,40}>")
_PIECES = re.compile(r"<[^<>\s]{1,40}>|[^<]+|<")
#: Words in a caption or an object label that make ``ocr=auto`` read the text.
_HINTS = """sign signs text word words letter letters writing written poster posters menu label labels book
books page pages paper document newspaper magazine screen screenshot banner billboard logo receipt ticket
license plate board whiteboard blackboard chalkboard note notes card cards envelope package box bottle can
map calendar clock keyboard monitor laptop phone"""
TEXT_HINTS = frozenset(_HINTS.split())


@dataclass(frozen=True)
class Answer:
    """One task's output for one image: its tokens as the tokenizer spells them, and their probabilities."""

    pieces: list[str]
    probs: list[float]
    #: The whole answer decoded at once (a character may span tokens), markers left out.
    text: str

    @property
    def confidence(self) -> float:
        """The geometric mean of the answer's token probabilities: how sure the model was of it."""
        if not self.probs:
            return 0.0
        return float(torch.tensor(self.probs).clamp_min(1e-12).log().mean().exp())


def split_pieces(text: str) -> list[str]:
    """A decoded string back into pieces: each ``<...>`` marker alone, the text between kept whole."""
    return _PIECES.findall(text)


def parse_objects(pieces: Sequence[str], probs: Sequence[float] | None = None) -> list[Detection]:
    """``<OD>`` output -> detections: ``label<loc_x1><loc_y1><loc_x2><loc_y2>``, maybe several boxes a label.

    Malformed output costs what it spoils: a box with fewer than four coordinates is dropped, a bin
    past 999 counts as 999, corners given in the wrong order are swapped, boxes without a label are
    skipped. Each box spans its bins' centres, so it is never outside 0..1. ``score`` is the geometric
    mean probability of the label's and the box's tokens (1 where no probabilities are given).
    """
    detections: list[Detection] = []
    label: list[str] = []
    label_logp: list[float] = []
    bins: list[int] = []
    box_logp: list[float] = []
    after_box = False
    for piece, prob in zip(pieces, probs if probs is not None else [1.0] * len(pieces), strict=True):
        logp = float(torch.tensor(max(float(prob), 1e-12)).log())
        loc = _LOC.fullmatch(piece)
        if loc is None:
            if _is_marker(piece):
                continue
            if after_box or bins:  # text after coordinates starts the next label
                label, label_logp, bins, box_logp, after_box = [], [], [], [], False
            label.append(piece)
            label_logp.append(logp)
            continue
        bins.append(min(int(loc[1]), BINS - 1))
        box_logp.append(logp)
        if len(bins) < 4:
            continue
        name = clean_text("".join(label))[:MAX_LABEL]
        if name:
            logps = label_logp + box_logp
            detections.append(Detection(name, float(torch.tensor(logps).mean().exp()), _box(bins)))
            if len(detections) >= MAX_OBJECTS:
                break
        bins, box_logp, after_box = [], [], True
    return detections


def _box(bins: Sequence[int]) -> Box:
    x1, y1, x2, y2 = ((b + 0.5) / BINS for b in bins)
    return Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def _is_marker(piece: str) -> bool:
    """A special or task token (``</s>``, ``<pad>``, ``<od>``, ``<loc_3>``): not text a user should see."""
    return _MARKER.fullmatch(piece) is not None


def suggests_text(caption: str, objects: Sequence[Detection]) -> bool:
    """``ocr=auto``: read the text when the caption or an object's label names something that carries text."""
    words = set(re.findall(r"[a-z]+", " ".join([caption, *(o.label for o in objects)]).lower()))
    return not words.isdisjoint(TEXT_HINTS)


class Florence2Describer(Describer):
    """A loaded Florence-2: caption (``detail``), objects, and text (``ocr``) for a batch of images."""

    supported_options = options_for("florence2")

    def __init__(
        self,
        name: str,
        model: Any,
        processor: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = 30,
        max_answer_tokens: int = 256,
        min_new_tokens: int | None = None,
        objects: bool = True,
    ) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.input_side = square_side(processor.image_processor)
        self.tokenizer = processor.tokenizer
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.max_answer_tokens = max_answer_tokens
        #: Benches fix the token count: compute, not the random weights' whims, is measured.
        self.min_new_tokens = min_new_tokens
        #: Off only in benches that time the caption alone.
        self.objects = objects
        self.image_token_id = model.config.image_token_id

    @classmethod
    def load(
        cls,
        name: str,
        source: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        quantize: str | None = None,
        max_new_tokens: int = 30,
        max_answer_tokens: int = 256,
        min_new_tokens: int | None = None,
    ) -> Florence2Describer:
        """Native transformers classes (no ``trust_remote_code``), read with ``local_files_only``."""
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        from imgsvc.vision.captioners.captioner import quantized

        started = time.perf_counter()
        try:
            processor = Florence2Processor.from_pretrained(source, local_files_only=True)
            model = Florence2ForConditionalGeneration.from_pretrained(
                source, dtype=dtype, local_files_only=True
            )
            model.to(device).eval()
            model = quantized(model, quantize, device)
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... alike
            raise ModelLoadError(f"cannot load Florence-2 model {name!r}: {exc}") from exc
        log.info("loaded Florence-2 %s on %s in %.1fs", name, device, time.perf_counter() - started)
        return cls(
            name,
            model,
            processor,
            device=device,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            max_answer_tokens=max_answer_tokens,
            min_new_tokens=min_new_tokens,
        )

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        """Options: ``detail`` (brief | detailed | paragraph), ``ocr`` (auto | always | never),
        ``max_length`` (tokens of the caption)."""
        options = options or {}
        self.check_options(options)
        detail = options.get("detail", "brief")
        ocr = options.get("ocr", "auto")
        if detail not in CAPTION_TASKS or ocr not in OCR_MODES:
            raise UnsupportedOption(f"detail must be one of {DETAILS} and ocr one of {OCR_MODES}")
        if not images:
            return []
        budget = self.max_new_tokens if detail == "brief" else self.max_answer_tokens
        budget = min(budget, options.get("max_length") or budget)
        with torch.inference_mode():
            features = self.encode_images(images)
            captions = self.run_task(CAPTION_TASKS[detail], features, budget)
            found = (
                [
                    parse_objects(a.pieces, a.probs)
                    for a in self.run_task("<OD>", features, self.max_answer_tokens)
                ]
                if self.objects
                else [None] * len(images)
            )
            wanted = [
                ocr == "always" or (ocr == "auto" and suggests_text(c.text, objects or ()))
                for c, objects in zip(captions, found, strict=True)
            ]
            read: Iterator[Answer] = iter(())
            if any(wanted):
                rows = [i for i, want in enumerate(wanted) if want]
                read = iter(self.run_task("<OCR>", features[rows], self.max_answer_tokens))
        return [
            Description(
                text=caption.text,
                objects=objects,
                lines=_lines(next(read)) if want else None,
            )
            for caption, objects, want in zip(captions, found, wanted, strict=True)
        ]

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image encoder's tokens, projected for the text encoder: one pass for every task."""
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        pixels = self.processor.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        output = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return output.pooler_output if hasattr(output, "pooler_output") else output

    def run_task(self, task: str, features: torch.Tensor, max_new_tokens: int) -> list[Answer]:
        """One task for a batch of encoded images: the task prompt beside each image's tokens, generated."""
        prompt = self.tokenizer(self._prompt(task), add_special_tokens=False, return_tensors="pt")[
            "input_ids"
        ]
        input_ids = prompt.to(self.device).expand(features.shape[0], -1)
        embeds = self.model.get_input_embeddings()(input_ids)
        mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=self.device)
        encoded = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=attention_mask)
        # The decoder cannot see past its position table (1,024 in the released checkpoints).
        max_new_tokens = min(max_new_tokens, self.model.config.text_config.max_position_embeddings - 2)
        limits: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if self.min_new_tokens is not None:
            limits["min_new_tokens"] = min(self.min_new_tokens, max_new_tokens)
        out = self.model.generate(
            encoder_outputs=encoded,
            attention_mask=attention_mask,
            num_beams=1,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
            **limits,
        )
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, -scores.shape[1] :]
        pad = self.tokenizer.pad_token_id
        known = len(self.tokenizer)  # an embedding matrix may have rows no token names
        answers = []
        for ids, logps in zip(generated.tolist(), scores.exp().tolist(), strict=True):
            kept = [(i, p) for i, p in zip(ids, logps, strict=True) if i != pad and i < known]
            tokens = self.tokenizer.convert_ids_to_tokens([i for i, _ in kept])
            pieces = [self.tokenizer.convert_tokens_to_string([token]) for token in tokens]
            text = _MARKER.sub("", self.tokenizer.convert_tokens_to_string(tokens))
            answers.append(Answer(pieces, [p for _, p in kept], clean_text(text)))
        return answers

    def _prompt(self, task: str) -> str:
        """What the processor would build: image tokens, then ``<s>`` + the task's question + ``</s>``."""
        question = self.processor.task_prompts_without_inputs[task]
        image_tokens = self.processor.image_token * self.processor.num_image_tokens
        return f"{image_tokens}{self.tokenizer.bos_token}{question}{self.tokenizer.eos_token}"


def _lines(answer: Answer) -> list[TextLine]:
    """``<OCR>`` answers one string; an empty answer is an empty list (looked, found no text)."""
    text = answer.text
    return [TextLine(text, round(answer.confidence, 4))] if text else []
