"""The one interface every model backend implements: images in, descriptions out.

Nothing here knows about Flask, RQ or SQL: the worker and the CLI hand a batch of
PIL images to a :class:`Describer` and store what comes back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, Self

from PIL import Image


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded (missing weights, unknown family...)."""


class UnsupportedOption(ValueError):
    """A job asked for an option this model cannot honour; retrying will not help."""


@dataclass(frozen=True)
class Tag:
    label: str
    score: float


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float


@dataclass(frozen=True)
class Box:
    """A rectangle in coordinates normalised to the image: 0 is the left/top edge, 1 the right/bottom."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2


@dataclass(frozen=True)
class Detection:
    """One thing a detector found: a COCO-style label (``person``, ``cup``, ``face``), its score and box."""

    label: str
    score: float
    box: Box


@dataclass(frozen=True)
class Face:
    """A face inside a person, with the emotion model's verdict when it ran (``happy``, 0.97)."""

    score: float
    box: Box
    emotion: str | None = None
    emotion_score: float | None = None


@dataclass(frozen=True)
class People:
    """Who is in the picture: how many people, their faces, and how many of those are smiling."""

    count: int
    faces: list[Face] = field(default_factory=list)
    smiling: int = 0


@dataclass(frozen=True)
class Description:
    """One image's result; the optional fields stay None where a backend has nothing to say."""

    text: str
    tags: list[Tag] | None = field(default=None)
    lines: list[TextLine] | None = field(default=None)
    objects: list[Detection] | None = field(default=None)
    people: People | None = field(default=None)


class Describer(ABC):
    """A loaded model. Load once (slow), then call ``describe`` many times (fast)."""

    #: What ``generated_by`` reports: the model that really ran.
    name: str
    #: Per-job options this backend honours (``max_length``, ``prompt``); others are refused.
    supported_options: frozenset[str] = frozenset()
    #: The models that really run inside a composed describer, and those it wanted but runs without
    #: (weights missing); the worker publishes both for /readyz.
    components: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    #: The side of the square every image is resized to before the model sees it (BLIP: 384), or
    #: None where the model reads more of a large photo (tiles, OCR): the worker decodes photos
    #: no larger than this needs (:func:`imgsvc.decoding.load_for_model`).
    input_side: int | None = None

    @abstractmethod
    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        """Describe a batch of RGB images, one :class:`Description` each, same order.

        ``options`` apply to the whole batch; callers batch only jobs with equal options.
        """

    def describe(self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None) -> list[str]:
        return [d.text for d in self.describe_full(images, options)]

    def check_options(self, options: Mapping[str, Any] | None) -> None:
        unsupported = sorted(set(options or ()) - self.supported_options)
        if unsupported:
            raise UnsupportedOption(f"option(s) {', '.join(unsupported)} not supported by {self.name}")


class Detector(Protocol):
    """A detection model of the scene describer: loaded once, then run on whole batches.

    ``load(models_dir)`` reads its weights from MODELS_DIR (a missing file is a :class:`ModelLoadError`
    naming it, see :func:`model_file`); ``detect(images)`` returns, for each image, what it found, with
    boxes normalised to that image, best first. ``name`` is what ``generated_by`` and /readyz report.
    """

    name: str

    @classmethod
    def load(cls, models_dir: Path) -> Self: ...

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]: ...


class EmotionModel(Protocol):
    """A loaded emotion model: for each face box in an image, its verdict, e.g. ``("happy", 0.98)``."""

    name: str

    @classmethod
    def load(cls, models_dir: Path) -> Self: ...

    def classify(self, image: Image.Image, boxes: Sequence[Box]) -> list[tuple[str, float]]: ...


def model_file(models_dir: Path, relative: str, component: str) -> Path:
    """``models_dir / relative``, or a :class:`ModelLoadError` that says what is missing and how to get it."""
    path = Path(models_dir) / relative
    if not path.is_file():
        raise ModelLoadError(
            f"{component}: weights file {path} is missing; run `imgsvc fetch-models` "
            f"(or point MODELS_DIR at the directory it filled)"
        )
    return path


def packaged_labels(filename: str, count: int) -> list[str]:
    """A model's class names from ``imgsvc/vision/data/``, one per line, in its output order."""
    labels = resources.files("imgsvc.vision").joinpath(f"data/{filename}").read_text("utf-8").splitlines()
    if len(labels) != count:
        raise ModelLoadError(f"{filename} has {len(labels)} labels, expected {count}")
    return labels
