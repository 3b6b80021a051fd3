"""A second look for text where the scene describer would otherwise name nothing: signs in photos.

``OCR=auto`` reads an image only where :func:`~imgsvc.vision.classifier.ocr.looks_like_text`
says so (document-like classes, or the row rhythm of lines of text). A shop sign, a beer sign or
a label on a projector has neither: one or two words in a photo. Where the scene has no person
and nothing sure, the text may be all there is to say, so the describer reads it after all (one
OCR pass, only on those photos) and keeps the lines that are plainly words, which the sentence
then gives as "a sign that reads ...".
"""

from __future__ import annotations

from collections.abc import Sequence

from imgsvc.vision.base import TextLine
from imgsvc.vision.scene.sentences import Scene

#: A line read on the second look counts only from this confidence (RapidOCR's own score) ...
SIGN_CONFIDENCE = 0.9
#: ... and with this many letters or digits: "★", "M6" and "S=" on coins and textures are noise.
SIGN_CHARS = 3


def wants_second_read(scene: Scene) -> bool:
    """Whether the scene names nobody and nothing for sure, and OCR did not run yet."""
    return scene.lines is None and not scene.people and not any(t.sure for t in scene.things)


def sign_lines(lines: Sequence[TextLine]) -> list[TextLine]:
    """The lines of a second read that are plainly words, not specks read as letters."""
    return [
        line
        for line in lines
        if line.confidence >= SIGN_CONFIDENCE and sum(c.isalnum() for c in line.text) >= SIGN_CHARS
    ]
