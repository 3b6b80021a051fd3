"""A describer that answers every image with the same fixed scene: a test double, not a model.

It stands in for the scene describer where what is under test is how objects and people reach the
user (the row, the API, the CLI, the page), never how they are detected. Its boxes fit the photo
:func:`scene_photo` builds, so screenshots make sense. Run as ``python -m tests.integration.scene_double``
it is ``python worker.py`` with this double in place of the configured model.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from imgsvc.vision.base import Box, Describer, Description, Detection, Face, People

NAME = "test-double:fixed-scene (not a model)"
TEXT = "Two people, one of them smiling, a cup and a motorcycle."
# Scores carry more digits than the API keeps, to show its rounding.
OBJECTS = [
    Detection("person", 0.951234, Box(0.02, 0.015, 0.352, 0.5)),
    Detection("person", 0.87309, Box(0.5, 0.063, 0.81, 0.5)),
    Detection("cup", 0.47118, Box(0.088, 0.522, 0.39, 0.884)),
    Detection("motorcycle", 0.49, Box(0.5, 0.586, 1.0, 0.952)),
]
PEOPLE = People(
    count=2,
    faces=[
        Face(0.88, Box(0.161, 0.039, 0.283, 0.186), emotion="happy", emotion_score=0.99871),
        Face(0.7712, Box(0.674, 0.088, 0.762, 0.195), emotion="neutral", emotion_score=0.61),
    ],
    smiling=1,
)


class FixedSceneDescriber(Describer):
    """The same objects and people for every image; ``name`` says plainly that it is a double."""

    name = NAME

    def __init__(
        self, objects: list[Detection] | None = OBJECTS, people: People | None = PEOPLE, text: str = TEXT
    ) -> None:
        self.objects = objects
        self.people = people
        self.text = text

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        self.check_options(options)
        return [Description(text=self.text, objects=self.objects, people=self.people) for _ in images]


def scene_photo(path: Path) -> Path:
    """Astronaut, cameraman, coffee cup and motorcycle from scikit-image, two by two in a 1024 px square."""
    from skimage import data

    panels = [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.camera()).convert("RGB"),
        Image.fromarray(data.coffee()),
        Image.open(Path(data.__file__).parent / "motorcycle_left.png").convert("RGB"),
    ]
    grid = Image.new("RGB", (1024, 1024))
    for index, panel in enumerate(panels):
        side = min(panel.size)
        left, top = (panel.width - side) // 2, (panel.height - side) // 2
        square = panel.crop((left, top, left + side, top + side)).resize((512, 512), Image.Resampling.LANCZOS)
        grid.paste(square, ((index % 2) * 512, (index // 2) * 512))
    grid.save(path, quality=90)
    return path


def main(argv: list[str] | None = None) -> int:
    from imgsvc.queue import worker

    worker.load_describer = lambda settings: FixedSceneDescriber()
    return worker.main(argv)


if __name__ == "__main__":
    sys.exit(main())
