"""Description quality on a public set: scikit-image's real photos and composites made from them.

    python -m bench.quality [--models builtin:efficientnet-lite0,builtin:scene] [--quick] [--show]

Each case lists words its description must contain (``a|b``: either) and wrong nouns it must not.
A case is a hit when every must-word is there and no wrong noun is. Prints each model's text per
case with its misses, then hits per model: the classifier alone (``builtin:efficientnet-lite0``,
the offline describer before the scene describer) against ``builtin:scene``. The tiny random
captioner the tests build says nothing meaningful and is left out. ``--quick`` runs a few cases.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from skimage import data

from imgsvc.config import Settings
from imgsvc.vision import Describer, load_describer

DEFAULT_MODELS = "builtin:efficientnet-lite0,builtin:scene"


def rgb(array: np.ndarray) -> Image.Image:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def row(*images: Image.Image, height: int = 400) -> Image.Image:
    """The images scaled to one height and set side by side, edge to edge."""
    scaled = [
        i.resize((round(i.width * height / i.height), height), Image.Resampling.BICUBIC) for i in images
    ]
    canvas = Image.new("RGB", (sum(i.width for i in scaled), height))
    x = 0
    for image in scaled:
        canvas.paste(image, (x, 0))
        x += image.width
    return canvas


def astronaut() -> Image.Image:
    return rgb(data.astronaut())


def camera() -> Image.Image:
    return rgb(data.camera())


def chelsea() -> Image.Image:
    return rgb(data.chelsea())


def motorcycle() -> Image.Image:
    return rgb(data.stereo_motorcycle()[0])


@dataclass(frozen=True)
class Case:
    name: str
    image: Callable[[], Image.Image]
    must: tuple[str, ...] = ()  # each: a word or phrase, "a|b" for either
    wrong: tuple[str, ...] = ()  # nouns that would be a confident mistake


CASES = (
    Case("astronaut", astronaut, ("person|woman|astronaut",), ("bobsled", "helmet")),
    Case("camera", camera, ("person|man", "black-and-white"), ("harmonica",)),
    Case("chelsea", chelsea, ("cat",), ("dog",)),
    Case("coffee", lambda: rgb(data.coffee()), ("coffee|espresso", "cup"), ("table",)),
    Case("motorcycle", motorcycle, ("motorcycle|motorbike",), ("moped", "scooter")),
    Case("horse", lambda: rgb(data.horse()), ("horse",), ("dog", "hairless")),
    Case("rocket", lambda: rgb(data.rocket()), (), ("drilling platform", "clock")),
    Case("moon", lambda: rgb(data.moon()), (), ("nematode", "kite", "bubble")),
    Case("coins", lambda: rgb(data.coins()), (), ("golf ball", "thimble")),
    Case("hubble", lambda: rgb(data.hubble_deep_field()), (), ("bubble", "nematode")),
    Case("page", lambda: rgb(data.page()), ("text", "segmentation"), ("pill bottle",)),
    Case("clock", lambda: rgb(data.clock()), (), ("bubble",)),
    Case("retina", lambda: rgb(data.retina()), (), ("umbrella", "lampshade")),
    Case("two people", lambda: row(astronaut(), camera()), ("two", "people"), ("three",)),
    Case(
        "three people",
        lambda: row(astronaut(), camera(), ImageOps.mirror(astronaut())),
        ("three", "people"),
        ("two people", "four"),
    ),
    Case(
        "two astronauts",
        lambda: row(astronaut(), ImageOps.mirror(astronaut())),
        ("two", "people"),
        ("three",),
    ),
    Case("cat and motorcycle", lambda: row(chelsea(), motorcycle()), ("cat", "motorcycle"), ("dog",)),
    Case("person and cat", lambda: row(astronaut(), chelsea()), ("person", "cat"), ("dog", "bobsled")),
    # Added after the thresholds were set, as a check on cases they were not tuned on.
    Case("text", lambda: rgb(data.text()), ("text",), ("ballpoint", "fountain pen")),
    Case("grass", lambda: rgb(data.grass()), (), ("soccer ball", "baseball", "ball")),
    Case("checkerboard", lambda: rgb(data.checkerboard()), (), ("crossword",)),
    Case("cells", lambda: rgb(data.immunohistochemistry()), (), ("brain coral", "wool")),
    Case("cat and coffee", lambda: row(chelsea(), rgb(data.coffee())), ("cat", "cup|coffee"), ("dog",)),
    Case("person and motorcycle", lambda: row(camera(), motorcycle()), ("person", "motorcycle"), ("moped",)),
)
QUICK = ("astronaut", "chelsea", "two people", "cat and motorcycle")


def misses(text: str, case: Case) -> list[str]:
    """What the text gets wrong: missing must-words (``-word``) and wrong nouns present (``+word``).

    Must-words match anywhere (OCR may glue words: "Region-basedsegmentation"); wrong nouns match
    whole words only.
    """
    lowered = text.lower()

    def has(word: str) -> bool:
        return re.search(rf"\b{re.escape(word)}\b", lowered) is not None

    result = [f"-{must}" for must in case.must if not any(w in lowered for w in must.split("|"))]
    return result + [f"+{word}" for word in case.wrong if has(word)]


def evaluate(describers: Sequence[Describer], cases: Sequence[Case], show: bool) -> dict[str, int]:
    """Describe every case with every model; print the misses; hits per model name."""
    hits = {d.name: 0 for d in describers}
    for case in cases:
        image = case.image()
        print(f"\n{case.name}")
        for describer in describers:
            (text,) = describer.describe([image])
            missed = misses(text, case)
            hits[describer.name] += not missed
            mark = "ok  " if not missed else "MISS"
            print(
                f"  {mark} {short(describer.name):<20} {text}"
                + (f"   [{' '.join(missed)}]" if missed else "")
            )
            if show:
                image.save(f"/tmp/quality-{case.name.replace(' ', '_')}.png")
    return hits


def short(name: str) -> str:
    return "builtin:scene" if name.startswith("builtin:scene") else name.removesuffix("+rapidocr")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated VISION_MODEL specs")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--show", action="store_true", help="also save each case's image under /tmp")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.quick or c.name in QUICK]
    describers = [
        load_describer(Settings.from_env(vision_model=spec.strip()))
        for spec in args.models.split(",")
        if spec.strip()
    ]
    hits = evaluate(describers, cases, args.show)
    print(f"\nhits over {len(cases)} cases (every must-word present, no wrong noun):")
    for describer in describers:
        print(f"  {describer.name:<40} {hits[describer.name]:3d} / {len(cases)}")
    people = [c for c in cases if any("person" in m or "people" in m for m in c.must)]
    print(f"  (of which {len(people)} have people in them)")


if __name__ == "__main__":
    main()
