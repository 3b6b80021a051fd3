"""Reading text in images (RapidOCR, PP-OCRv4 in ONNX) and deciding cheaply when it is worth it.

OCR costs ~0.5-1 s an image against ~20 ms for the classifier, so ``OCR=auto`` runs it only
where :func:`looks_like_text` says so. ``rapidocr_onnxruntime`` is imported on first use: a
machine without it works as long as OCR is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from imgsvc.vision.base import ModelLoadError, Tag, TextLine

# ImageNet classes whose photos are mostly text or printed matter.
DOCUMENT_LABELS = frozenset(
    {
        "web site", "book jacket", "envelope", "menu", "crossword puzzle", "comic book", "packet",
        "binder", "scoreboard", "street sign", "notebook", "slide rule", "monitor", "screen",
    }
)  # fmt: skip
#: Summed probability of document-like labels in the top-k that makes an image worth reading.
DOCUMENT_SCORE = 0.15
#: Std of per-row edge density over a 768-px thumbnail: lines of text alternate dense rows and blank
#: gaps (scanned page 0.15, rendered text 10-48 px 0.06-0.16, also rotated 90 degrees); photos and
#: textures (scikit-image's astronaut, coins, grass, gravel, checkerboard) stay at or under 0.04.
LINE_RHYTHM = 0.06
_EDGE_STEP = 40  # grey levels between neighbours that count as a stroke edge
#: Lines RapidOCR itself scores below this are dropped as likely misreads.
MIN_LINE_CONFIDENCE = 0.5


def line_rhythm(image: Image.Image) -> float:
    """How strongly edge density alternates from row to row, the signature of lines of text."""
    thumb = image.convert("L")
    thumb.thumbnail((768, 768))
    grey = np.asarray(thumb, dtype=np.int16)
    if grey.shape[1] < 2:
        return 0.0
    edges = np.abs(np.diff(grey, axis=1)) > _EDGE_STEP
    return float(edges.mean(axis=1).std())


def looks_like_text(image: Image.Image, tags: Sequence[Tag]) -> bool:
    """Cheap guess (a few ms) whether OCR would find something: document-like labels or text-line rhythm."""
    if sum(t.score for t in tags if t.label in DOCUMENT_LABELS) >= DOCUMENT_SCORE:
        return True
    return line_rhythm(image) >= LINE_RHYTHM


class TextReader:
    """A loaded RapidOCR engine; ``read`` returns the lines it is reasonably sure of, top to bottom."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @classmethod
    def load(cls, threads: int = 0) -> TextReader:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            # The cause matters: a missing shared library of cv2 reads like a missing package.
            raise ModelLoadError(
                f"OCR is enabled but rapidocr-onnxruntime cannot be imported ({exc}): "
                "`pip install rapidocr-onnxruntime`, or set OCR=off"
            ) from exc
        # -1 lets onnxruntime take every core, which fights torch's threads in the same worker.
        return cls(RapidOCR(intra_op_num_threads=threads or -1))

    def read(self, image: Image.Image) -> list[TextLine]:
        # A PIL image (not an array) so RapidOCR does its own RGB -> BGR conversion.
        result, _timings = self._engine(image.convert("RGB"))
        return [
            TextLine(text=str(text), confidence=round(float(score), 4))
            for _box, text, score in result or ()
            if float(score) >= MIN_LINE_CONFIDENCE and str(text).strip()
        ]
