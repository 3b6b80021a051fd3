"""The one interface every model backend implements: images in, descriptions out.

Nothing here knows about Flask, RQ or SQL: the worker and the CLI hand a batch of
PIL images to a :class:`Describer` and store what comes back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
class Description:
    """One image's result; ``tags``/``text`` stay None where a backend has none."""

    text: str
    tags: list[Tag] | None = field(default=None)
    lines: list[TextLine] | None = field(default=None)


class Describer(ABC):
    """A loaded model. Load once (slow), then call ``describe`` many times (fast)."""

    #: What ``generated_by`` reports: the model that really ran.
    name: str
    #: Per-job options this backend honours (``max_length``, ``prompt``); others are refused.
    supported_options: frozenset[str] = frozenset()

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
