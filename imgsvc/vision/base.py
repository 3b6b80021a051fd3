"""The one interface every model backend implements: images in, descriptions out.

Nothing here knows about Flask, RQ or SQL: the worker and the CLI hand a batch of
PIL images to a :class:`Describer` and store what comes back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded (missing weights, unknown family...)."""


@dataclass(frozen=True)
class Tag:
    label: str
    score: float


@dataclass(frozen=True)
class TextLine:
    text: str
    confidence: float


@dataclass(frozen=True)
class Description:
    """One image's result; ``tags``/``text`` stay None where a backend has none."""

    text: str
    tags: list[Tag] | None = field(default=None)
    lines: list[TextLine] | None = field(default=None)


class Describer(ABC):
    """A loaded model. Load once (slow), then call ``describe`` many times (fast)."""

    #: What ``generated_by`` reports: the model that really ran.
    name: str

    @abstractmethod
    def describe_full(self, images: Sequence[Image.Image]) -> list[Description]:
        """Describe a batch of RGB images, one :class:`Description` each, same order."""

    def describe(self, images: Sequence[Image.Image]) -> list[str]:
        return [d.text for d in self.describe_full(images)]
