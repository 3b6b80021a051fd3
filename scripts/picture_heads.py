"""Train the scene describer's two picture heads: is this a drawing, or a painting, rather than a photo?

    python scripts/picture_heads.py GCOMPRIS_DIR OPENCLIPART_DIR OPENCV_DOC_DIR PLASMA_DIR

writes ``imgsvc/vision/data/drawing_head.txt`` and ``painting_head.txt``. The classifier and the
detectors were trained on photos: on a cartoon fish the classifier says "mouse", on a painted
street it names what the brushwork resembles, and "a photo of ..." is wrong before the noun. Each
head is a logistic regression over EfficientNet-Lite0's pooled features (the 1280 numbers its
ImageNet head reads, so the describer gets them for free). Throwaway inputs, all Debian packages,
each unpacked with ``apt-get download NAME && dpkg-deb -x NAME_*.deb DIR``:
  GCOMPRIS_DIR      ``gcompris-qt-data``: its ``paintings`` activity holds 22 public-domain works
                    from the WebMuseum cut into puzzle pieces, put back together here from each
                    board's piece positions (the Pietà, a photo of a sculpture, is left out); its
                    other activities hold 257 photos and, in ``lang``, 116 cartoons;
  OPENCLIPART_DIR   ``openclipart-png``: 240 drawings, drawn with a fixed seed;
  OPENCV_DOC_DIR    ``opencv-doc``: its logos (drawings), its example photos, and every other
                    picture of its tutorials at least ``MIN_SIDE`` a side (filtered photos, plots,
                    screenshots: for the painting head, no painting);
  PLASMA_DIR        ``plasma-workspace-wallpapers``: its photos, and for the painting head its
                    abstract renders (not the painted or illustrated ones in NOT_NEGATIVE);
and scikit-image's photos. The drawing head: cartoons, clip art and logos against photos. The
painting head: the paintings, each with three crops of 60-85 % of its sides (part of a canvas is
still a painting), against everything else. Nothing of the development set: a file whose sha256
is in ``bench/devset.json`` is refused, and so is any picture whose thumbnail or pooled features
nearly match one of its photos (an opencv tutorial's copy of a photo), so that its tuning half
measures the heads and its validation half stays unseen.

Paintings are few and the rest many: a first painting head trained on 25 package photos fired on
photos of people at a table and of autumn leaves; every picture the packages hold is now used. A
grouped 5-fold cross-validation (a painting and its crops in one fold) is printed on stderr, with
the negatives that scored highest.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))
from bench.devset import load_photos, qt_resources  # noqa: E402
from imgsvc.vision.classifier.describer import BuiltinDescriber  # noqa: E402
from imgsvc.vision.scene.drawings import DRAWING_SCORE, PAINTING_SCORE  # noqa: E402

RCC = "usr/share/gcompris-qt/rcc"
#: GCompris activities with photos; details is left out: its circles are cut from paintings as
#: often as from photos.
PHOTO_ACTIVITIES = (
    "categorization", "explore_monuments", "explore_world_animals", "explore_farm_animals",
    "explore_world_music", "erase",
)  # fmt: skip
CARTOONS = "lang"
NOT_PAINTINGS = ("Michelangelo",)  # a photo of a marble sculpture
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
LOGOS = ("LinuxLogo.jpg", "WindowsLogo.jpg", "opencv-logo.png", "pic1.png", "pic3.png", "ellipses.jpg")
OPENCV_PHOTOS = (
    "aloeR.jpg", "aloeGT.png", "basketball2.png", "box.png", "ela_modified.jpg", "left01.jpg", "left07.jpg",
    "right03.jpg", "leuvenB.jpg", "rubberwhale1.png", "stuff.jpg", "text_motion.jpg",
)  # fmt: skip
PLASMA_PHOTOS = (
    "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "OneStandsOut", "Path",
    "Volna", "summer_1am",
)  # fmt: skip
#: Plasma wallpapers that are painted or illustrated: in neither head's training.
NOT_NEGATIVE = ("Autumn", "SafeLanding", "FlyingKonqui")
SKIMAGE_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "horse", "rocket", "moon", "coins", "hubble_deep_field",
    "clock", "retina", "grass", "immunohistochemistry",
)  # fmt: skip
MIN_SIDE = 150
#: Cosine of pooled features, or correlation of thumbnails, from which a picture is a development-set copy.
NEAR_COPY = 0.9
CLIPART = 240
CROPS = 3
#: L2 penalties, from the cross-validation. Painting: 0.3 and 1 kept 17 of 21 paintings at
#: PAINTING_SCORE and let 3 of 1514 other pictures through, 5 kept 13 (2 through), 20 kept 10.
PENALTY = {"drawing": 1.0, "painting": 1.0}
SHOWN = 6


def paintings(bundle: dict[str, bytes]) -> dict[str, Image.Image]:
    """Each board of GCompris's paintings activity, its pieces put back at their centres."""
    found = {}
    for path, content in sorted(bundle.items()):
        if "/board/" not in path or not path.endswith(".qml"):
            continue
        text = content.decode("utf-8")
        width = int(re.search(r'"width":\s*(\d+)', text).group(1))
        height = int(re.search(r'"height":\s*(\d+)', text).group(1))
        pieces = re.findall(r'"pixmapfile" : "(image/[^"]+)",\s*"x" : "([\d.]+)",\s*"y" : "([\d.]+)"', text)
        if any(word in pieces[0][0] for word in NOT_PAINTINGS):
            continue
        canvas = Image.new("RGBA", (width, height), (255, 255, 255, 0))
        folder = path.rsplit("/board/", 1)[0]
        for file, x, y in pieces:
            piece = Image.open(BytesIO(bundle[f"{folder}/{file}"])).convert("RGBA")
            left, top = round(float(x) * width - piece.width / 2), round(float(y) * height - piece.height / 2)
            canvas.alpha_composite(piece, (left, top))
        found[pieces[0][0]] = flattened(canvas).crop(canvas.getbbox())
    return found


def crops(image: Image.Image, rng: random.Random) -> list[Image.Image]:
    result = []
    for _ in range(CROPS):
        w, h = (round(side * rng.uniform(0.6, 0.85)) for side in image.size)
        left, top = rng.randrange(image.width - w + 1), rng.randrange(image.height - h + 1)
        result.append(image.crop((left, top, left + w, top + h)))
    return result


def train(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[float, np.ndarray]:
    """Class-balanced L2 logistic regression on standardised features, returned in raw units."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(3000):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = weight * (p - y)
        w -= 0.05 * (z.T @ g / len(y) + penalty * w / len(y))
        b -= 0.05 * g.mean()
    return b - float((mean / std) @ w), w / std


def flattened(image: Image.Image) -> Image.Image:
    """RGB, anything transparent laid on white (clip art is drawn on a transparent page)."""
    page = Image.new("RGBA", image.size, (255, 255, 255, 255))
    page.alpha_composite(image.convert("RGBA"))
    return page.convert("RGB")


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 16x16 grey thumbnail, centred and scaled: near copies correlate over NEAR_COPY."""
    grey = np.asarray(image.convert("L").resize((16, 16)), dtype=np.float64).ravel()
    return (grey - grey.mean()) / (grey.std() + 1e-6)


def pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})


class Pictures:
    """The inputs as (name, kind, group, features): kinds photo, other, cartoon, clipart, logo, painting."""

    def __init__(self, features: Callable[[list[Image.Image]], np.ndarray]) -> None:
        self.features = features
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.groups: list[int] = []
        self.rows: list[np.ndarray] = []
        self.refused = 0
        # The two halves, not the extra tuning photos (GCompris's own, which this script reads too).
        try:
            halves = [(p, path) for p, path in load_photos() if not p.half]
        except FileNotFoundError as exc:
            raise SystemExit(f"{exc}: its copies are refused, so it must be here") from exc
        photos = [Image.open(path).convert("RGB") for _, path in halves]
        unit = features(photos)
        self.devset_features = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        self.devset_thumbs = np.stack([thumbnail(p) for p in photos])
        self.devset_hashes = {p.sha256 for p, _ in halves}

    def add(self, kind: str, items: list[tuple[str, bytes | Image.Image]], group: int | None = None) -> None:
        names, images = [], []
        for name, item in items:
            if isinstance(item, bytes):
                if hashlib.sha256(item).hexdigest() in self.devset_hashes:
                    self.refused += 1
                    continue
                try:
                    image = Image.open(BytesIO(item))
                    image.draft("RGB", (4 * MIN_SIDE, 4 * MIN_SIDE))
                    image = flattened(image)
                except (OSError, ValueError):
                    continue  # an SVG renamed, a truncated file: not a picture
                if min(image.size) < MIN_SIDE and kind in {"photo", "other"}:
                    continue
            else:
                image = item
            names.append(name)
            images.append(image)
        if not images:
            return
        x = self.features(images)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        thumbs = np.stack([thumbnail(i) for i in images])
        near = ((unit @ self.devset_features.T).max(axis=1) >= NEAR_COPY) | (
            (thumbs @ self.devset_thumbs.T / thumbs.shape[1]).max(axis=1) >= NEAR_COPY
        )
        self.refused += int(near.sum())
        for i in np.flatnonzero(~near):
            self.names.append(names[i])
            self.kinds.append(kind)
            self.groups.append(len(self.groups) if group is None else group)
            self.rows.append(x[i])


def cross_validate(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    whole: np.ndarray,
    threshold: float,
) -> None:
    """Grouped 5-fold cross-validation, printed on stderr."""
    scores = np.zeros(len(y))
    fold = groups % 5
    for k in range(5):
        bias, weights = train(x[fold != k], y[fold != k], PENALTY[name])
        scores[fold == k] = 1 / (1 + np.exp(-(x[fold == k] @ weights + bias)))
    yes, no = (y == 1) & whole, np.flatnonzero(y == 0)
    print(
        f"# {name} head, cross-validated at >= {threshold}: {int((scores[yes] >= threshold).sum())}/"
        f"{int(yes.sum())} {name}s, {int((scores[no] >= threshold).sum())}/{len(no)} other pictures;"
        " highest others:",
        file=sys.stderr,
    )
    for i in no[np.argsort(-scores[no])][:SHOWN]:
        print(f"#   {scores[i]:.3f} {names[i]}", file=sys.stderr)


def write(name: str, x: np.ndarray, y: np.ndarray) -> None:
    bias, weights = train(x, y, PENALTY[name])
    lines = [
        f"# The {name} head: bias, then 1280 weights over EfficientNet-Lite0's pooled features.",
        "# Generated by scripts/picture_heads.py (its docstring says from what); do not edit by hand.",
        f"{bias:.6g}",
        *(f"{value:.6g}" for value in weights),
    ]
    (ROOT / f"imgsvc/vision/data/{name}_head.txt").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    gcompris, clipart, opencv, plasma = (Path(a) for a in argv)
    classifier = BuiltinDescriber.load("efficientnet-lite0", ocr="off")

    def features(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate(
            [classifier.classify_with_features(images[i : i + 16])[1] for i in range(0, len(images), 16)]
        ).astype(np.float64)

    found = Pictures(features)
    rng = random.Random(0)
    for number, (name, image) in enumerate(
        paintings(qt_resources((gcompris / RCC / "paintings.rcc").read_bytes())).items()
    ):
        views = [image, *crops(image, rng)]
        found.add(
            "painting",
            [(name if i == 0 else f"{name} crop {i}", v) for i, v in enumerate(views)],
            -1 - number,
        )
    for activity in (*PHOTO_ACTIVITIES, CARTOONS):
        bundle = qt_resources((gcompris / RCC / f"{activity}.rcc").read_bytes())
        kind = "cartoon" if activity == CARTOONS else "photo"
        found.add(kind, [(p, c) for p, c in sorted(bundle.items()) if p.endswith(".webp")])
    drawn = sorted(clipart.rglob("*.png"))
    random.Random(0).shuffle(drawn)
    found.add("clipart", [(str(p), p.read_bytes()) for p in drawn[:CLIPART]])
    data_dir = opencv / OPENCV_DATA
    found.add("logo", [(n, (data_dir / n).read_bytes()) for n in LOGOS])
    found.add("photo", [(n, (data_dir / n).read_bytes()) for n in OPENCV_PHOTOS])
    named = {data_dir / n for n in (*LOGOS, *OPENCV_PHOTOS)}
    found.add("other", [(str(p), p.read_bytes()) for p in pictures(opencv) if p not in named])
    for folder in sorted(plasma.rglob("contents/images")):
        wallpaper = folder.parent.parent.name
        if wallpaper not in NOT_NEGATIVE:
            smallest = min(folder.iterdir(), key=lambda p: p.stat().st_size)
            found.add(
                "photo" if wallpaper in PLASMA_PHOTOS else "other", [(wallpaper, smallest.read_bytes())]
            )
    found.add("photo", [(n, Image.fromarray(getattr(data, n)()).convert("RGB")) for n in SKIMAGE_PHOTOS])

    x, kinds = np.stack(found.rows), np.asarray(found.kinds)
    groups = np.asarray(found.groups) % 100003
    whole = np.asarray(["crop" not in n for n in found.names])
    counts = {k: int((kinds == k).sum()) for k in dict.fromkeys(found.kinds)}
    print(
        f"# pictures: {counts}; {found.refused} development-set photos or near copies refused",
        file=sys.stderr,
    )

    drawn_or_photo = np.isin(kinds, ["cartoon", "clipart", "logo", "photo"])
    y = np.isin(kinds, ["cartoon", "clipart", "logo"]).astype(float)
    subset = np.flatnonzero(drawn_or_photo)
    names = [found.names[i] for i in subset]
    cross_validate("drawing", x[subset], y[subset], groups[subset], names, whole[subset], DRAWING_SCORE)
    write("drawing", x[subset], y[subset])
    y = (kinds == "painting").astype(float)
    cross_validate("painting", x, y, groups, found.names, whole, PAINTING_SCORE)
    write("painting", x, y)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
