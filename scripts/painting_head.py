"""Train the scene describer's painting head: is this picture a painting (or a print) rather than a photo?

    python scripts/painting_head.py GCOMPRIS_DIR OPENCLIPART_DIR OPENCV_DOC_DIR PLASMA_DIR \
        > imgsvc/vision/data/painting_head.txt

The classifier and the detectors were trained on photos: on a painted street they name what the
brushwork resembles, and "a photo of ..." is wrong before the noun. A logistic regression over
EfficientNet-Lite0's pooled features (as the drawing head, ``scripts/drawing_head.py``) says
when the picture is painted. Throwaway inputs, all Debian packages, each unpacked with
``apt-get download NAME && dpkg-deb -x NAME_*.deb DIR``:
  GCOMPRIS_DIR      ``gcompris-qt-data``: its ``paintings`` activity holds 22 public-domain works
                    from the WebMuseum cut into puzzle pieces, put back together here from each
                    board's piece positions (the Pietà, a photo of a sculpture, is left out); its
                    other activities hold 257 photos and 116 cartoons;
  OPENCLIPART_DIR   ``openclipart-png``: 240 drawings;
  OPENCV_DOC_DIR    ``opencv-doc``: every picture of its examples and tutorials at least
                    ``MIN_SIDE`` a side (photos, their filtered versions, plots, screenshots);
  PLASMA_DIR        ``plasma-workspace-wallpapers``: its photos and abstract renders (not the
                    painted or illustrated ones in NOT_NEGATIVE).
Each painting also gives three crops of 60-85 % of its sides, kept in the painting's fold. Nothing
of the development set: a file whose sha256 is in ``bench/devset.json`` is refused, and so is any
picture whose thumbnail or pooled features nearly match one of its photos (an opencv tutorial's
copy of a photo), so that its validation half stays unseen.

Paintings are few and the rest many: the first heads, trained on 25 package photos, fired on
photos of people at a table and of autumn leaves, so every picture the packages hold that is no
painting is a negative. It prints the head on stdout and, on stderr, a grouped 5-fold
cross-validation (each painting and its crops in one fold) with the negatives that scored highest.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import struct
import sys
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from drawing_head import SKIMAGE_PHOTOS  # noqa: E402
from skimage import data  # noqa: E402

from bench.devset import load_photos  # noqa: E402
from imgsvc.vision.classifier.describer import BuiltinDescriber  # noqa: E402
from imgsvc.vision.scene.drawings import PAINTING_SCORE  # noqa: E402

RCC = "usr/share/gcompris-qt/rcc"
#: GCompris activities with photos (and, in lang, cartoons); details is left out: its circles are
#: cut from paintings as often as from photos.
PHOTO_ACTIVITIES = (
    "categorization", "explore_monuments", "explore_world_animals", "explore_farm_animals",
    "explore_world_music", "erase", "lang",
)  # fmt: skip
#: Plasma wallpapers that are painted or illustrated: neither kind, so in neither class.
NOT_NEGATIVE = ("Autumn", "SafeLanding", "FlyingKonqui")
MIN_SIDE = 150
#: Cosine of pooled features, or correlation of thumbnails, from which a picture is a development-set copy.
NEAR_COPY = 0.9
TOP_NEGATIVES = 25
NOT_PAINTINGS = ("Michelangelo",)  # a photo of a marble sculpture
CLIPART = 240
CROPS = 3
#: L2 penalty, from the cross-validation at PAINTING_SCORE: 0.3 and 1 kept 17 of 21 paintings and let
#: 3 of 1514 other pictures through, 5 kept 13 (2 through), 20 kept 10 (none through).
PENALTY = 1.0


def qt_resources(path: Path) -> dict[str, bytes]:
    """Every file in a Qt resource bundle (``.rcc``, format 1-3), by its path inside it."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource bundle")
    version, tree, data_at, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node
        name_at, flags = struct.unpack(">IH", blob[at : at + 6])
        here = f"{prefix}/{name(name_at)}" if index else ""
        if flags & 2:  # a directory
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, here)
            return
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data_at + offset : data_at + offset + 4])
        content = blob[data_at + offset + 4 : data_at + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not read here")
        files[here] = zlib.decompress(content[4:]) if flags & 1 else content

    walk(0, "")
    return files


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
        page = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        page.alpha_composite(canvas)
        found[pieces[0][0]] = page.convert("RGB").crop(canvas.getbbox())
    return found


def crops(image: Image.Image, rng: random.Random) -> list[Image.Image]:
    result = []
    for _ in range(CROPS):
        w, h = (round(side * rng.uniform(0.6, 0.85)) for side in image.size)
        left, top = rng.randrange(image.width - w + 1), rng.randrange(image.height - h + 1)
        result.append(image.crop((left, top, left + w, top + h)))
    return result


def train(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Class-balanced L2 logistic regression on standardised features, returned in raw units."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(3000):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = weight * (p - y)
        w -= 0.05 * (z.T @ g / len(y) + PENALTY * w / len(y))
        b -= 0.05 * g.mean()
    return b - float((mean / std) @ w), w / std


def flattened(image: Image.Image) -> Image.Image:
    """RGB, anything transparent laid on white (clip art is drawn on a transparent page)."""
    page = Image.new("RGBA", image.size, (255, 255, 255, 255))
    page.alpha_composite(image.convert("RGBA"))
    return page.convert("RGB")


def pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 16x16 grey thumbnail, centred and scaled: near copies correlate over NEAR_COPY."""
    grey = np.asarray(image.convert("L").resize((16, 16)), dtype=np.float64).ravel()
    return (grey - grey.mean()) / (grey.std() + 1e-6)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    gcompris, clipart, opencv, plasma = (Path(a) for a in argv)
    rcc = gcompris / RCC
    works = paintings(qt_resources(rcc / "paintings.rcc"))
    others: list[tuple[str, bytes]] = [
        (path, content)
        for activity in PHOTO_ACTIVITIES
        for path, content in sorted(qt_resources(rcc / f"{activity}.rcc").items())
        if path.endswith(".webp") and "/paintings/" not in path
    ]
    drawn = sorted(clipart.rglob("*.png"))
    random.Random(0).shuffle(drawn)
    files = [*drawn[:CLIPART], *pictures(opencv)]
    for wallpaper in sorted(plasma.rglob("contents/images")):
        if wallpaper.parent.parent.name not in NOT_NEGATIVE:
            files.append(min(wallpaper.iterdir(), key=lambda p: p.stat().st_size))  # one size each
    others += [(str(p), p.read_bytes()) for p in files]
    classifier = BuiltinDescriber.load("efficientnet-lite0", ocr="off")

    def features(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate(
            [classifier.classify_with_features(images[i : i + 16])[1] for i in range(0, len(images), 16)]
        ).astype(np.float64)

    devset_photos = [Image.open(path).convert("RGB") for _, path in load_photos()]
    if len(devset_photos) != len(json.loads((ROOT / "bench/devset.json").read_text())["photos"]):
        raise SystemExit("fetch the development set first (python -m bench devset): its copies are refused")
    devset_features = features(devset_photos)
    devset_features /= np.linalg.norm(devset_features, axis=1, keepdims=True)
    devset_thumbs = np.stack([thumbnail(p) for p in devset_photos])
    devset_hashes = {p["sha256"] for p in json.loads((ROOT / "bench/devset.json").read_text())["photos"]}

    names, images = [], []
    for name, content in others:
        if hashlib.sha256(content).hexdigest() in devset_hashes:
            continue
        try:
            image = Image.open(BytesIO(content))
            image.draft("RGB", (4 * MIN_SIDE, 4 * MIN_SIDE))
            image = flattened(image)
        except (OSError, ValueError):
            continue  # an SVG renamed, a truncated file: not a picture
        if min(image.size) >= MIN_SIDE or "openclipart" in name:
            names.append(name)
            images.append(image)
    x_others = features(images)
    unit = x_others / np.linalg.norm(x_others, axis=1, keepdims=True)
    near = ((unit @ devset_features.T).max(axis=1) >= NEAR_COPY) | (
        (np.stack([thumbnail(i) for i in images]) @ devset_thumbs.T / 256).max(axis=1) >= NEAR_COPY
    )
    names = [n for n, skip in zip(names, near, strict=True) if not skip]
    x_others = x_others[~near]
    images += [Image.fromarray(getattr(data, n)()).convert("RGB") for n in SKIMAGE_PHOTOS]
    x_others = np.concatenate([x_others, features(images[len(near) :])])
    names += list(SKIMAGE_PHOTOS)
    print(
        f"# {len(works)} paintings; {len(names)} other pictures ({int(near.sum())} near copies of the"
        " development set left out)",
        file=sys.stderr,
    )

    rng = random.Random(0)
    painted, groups = [], []
    for group, image in enumerate(works.values()):
        for view in [image, *crops(image, rng)]:
            painted.append(view)
            groups.append(group)
    x = np.concatenate([features(painted), x_others])
    y = np.concatenate([np.ones(len(painted)), np.zeros(len(names))])
    group = np.concatenate([np.asarray(groups), len(works) + np.arange(len(names))])

    folds = 5
    fold_of = group % folds
    scores = np.zeros(len(y))
    for k in range(folds):
        bias, weights = train(x[fold_of != k], y[fold_of != k])
        scores[fold_of == k] = 1 / (1 + np.exp(-(x[fold_of == k] @ weights + bias)))
    whole = scores[: len(painted)][[i for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]]
    rest = scores[len(painted) :]
    print(
        f"# cross-validated: {int((whole >= PAINTING_SCORE).sum())}/{len(whole)} whole paintings, "
        f"{int((scores[: len(painted)] >= PAINTING_SCORE).sum())}/{len(painted)} with crops, and "
        f"{int((rest >= PAINTING_SCORE).sum())}/{len(rest)} other pictures at >= {PAINTING_SCORE}; highest:",
        file=sys.stderr,
    )
    for i in np.argsort(-rest)[:TOP_NEGATIVES]:
        print(f"#   {rest[i]:.3f} {names[i]}", file=sys.stderr)
    bias, weights = train(x, y)
    print("# The painting head: bias, then 1280 weights over EfficientNet-Lite0's pooled features.")
    print("# Generated by scripts/painting_head.py (its docstring says from what); do not edit by hand.")
    print(f"{bias:.6g}")
    for value in weights:
        print(f"{value:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
