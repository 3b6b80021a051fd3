"""A :class:`Description`'s findings as plain JSON: the part of a result the vision side knows.

One function, so the job row (hence the API and webhooks) and ``imgsvc describe --json`` never disagree
on field names or rounding; ``imgsvc.results.Findings`` is built from it, and the whole result's shape
is defined there. A field a backend has nothing to say about stays ``None`` (JSON ``null``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from imgsvc.vision.base import Box, Description, Detection, Face, People, Tag, TextLine

#: Decimals kept for scores and normalised coordinates: 1/10,000 of the image is well below a pixel.
PRECISION = 4

T = TypeVar("T")


def description_record(description: Description) -> dict[str, Any]:
    """``{tags, text, objects, people}`` of one description, JSON-ready (floats, no dataclasses)."""
    return {
        "tags": _each(description.tags, tag_record),
        "text": _each(description.lines, line_record),
        "objects": _each(description.objects, detection_record),
        "people": None if description.people is None else people_record(description.people),
    }


def tag_record(tag: Tag) -> dict[str, Any]:
    return {"label": tag.label, "score": tag.score}


def line_record(line: TextLine) -> dict[str, Any]:
    return {"text": line.text, "confidence": line.confidence}


def detection_record(detection: Detection) -> dict[str, Any]:
    return {"label": detection.label, "score": _score(detection.score), "box": box_record(detection.box)}


def people_record(people: People) -> dict[str, Any]:
    return {
        "count": int(people.count),
        "faces": [face_record(face) for face in people.faces],
        "smiling": int(people.smiling),
    }


def face_record(face: Face) -> dict[str, Any]:
    return {
        "score": _score(face.score),
        "box": box_record(face.box),
        "emotion": face.emotion,
        "emotion_score": None if face.emotion_score is None else _score(face.emotion_score),
    }


def box_record(box: Box) -> dict[str, float]:
    """Clamped to the image: detectors may reach a little past its edges, a client must not care."""
    return {
        name: round(min(1.0, max(0.0, float(getattr(box, name)))), PRECISION)
        for name in ("x1", "y1", "x2", "y2")
    }


def _score(value: float) -> float:
    # float(): detectors hand over numpy or torch scalars, which JSON columns cannot store
    return round(float(value), PRECISION)


def _each(items: Sequence[T] | None, record: Callable[[T], dict[str, Any]]) -> list[dict[str, Any]] | None:
    return None if items is None else [record(item) for item in items]
