"""A second look for text where the scene describer would otherwise name nothing: signs in photos.

``OCR=auto`` reads an image only where :func:`~imgsvc.vision.classifier.ocr.looks_like_text`
says so (document-like classes, or the row rhythm of lines of text). A shop sign, a beer sign or
a label on a projector has neither: one or two words in a photo. Where the scene has no person
and nothing sure, the text may be all there is to say, so the describer reads it after all (one
OCR pass, only on those photos) and keeps the lines that are plainly words, which the sentence
then gives as "a sign that reads ...".
"""

from __future__ import annotations

from imgsvc.vision.scene.sentences import Scene, sign_lines

__all__ = ["sign_lines", "wants_second_read"]


def wants_second_read(scene: Scene) -> bool:
    """Whether the scene names nobody and nothing for sure, and OCR did not run yet."""
    return scene.lines is None and not scene.people and not any(t.sure for t in scene.things)
