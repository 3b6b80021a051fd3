"""The quality bench's scoring and the development set's manifest, fetch and split: no model, no network."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.devset import (
    HALVES,
    FetchError,
    Photo,
    load_manifest,
    qt_resources,
    read_members,
    split,
    with_people,
)
from bench.quality import (
    Case,
    Score,
    evaluate,
    jpeg_variant,
    misses,
    names,
    people_said,
    reencoded,
    shrink_variant,
    shrunk,
    wrong_nouns,
)
from bench.quality import main as quality_main


def case(must=(), wrong=(), people=None) -> Case:
    return Case("photo", lambda: None, tuple(must), tuple(wrong), people)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("A photo of two people side by side, one of them smiling.", 2),
        ("A photo of a smiling person to the left of a cat.", 1),
        ("A photo of a man and two women at a table.", 3),
        ("A photo of 12 people.", 12),
        ("A photo of a cat.", 0),
        ("A photo of what may be a person.", 0),  # a hedge claims nobody
    ],
)
def test_people_said(text, count):
    assert people_said(text) == count


def test_a_hedged_or_quoted_noun_is_not_a_confident_mistake():
    bear = case(wrong=("bear", "document"))
    assert wrong_nouns("A photo of a bear.", bear) == ["bear"]
    assert wrong_nouns("A photo of bears.", bear) == ["bear"]
    assert wrong_nouns("A photo of what may be a bear.", bear) == []
    assert wrong_nouns("A photo of a sign that reads 'bear with us'.", bear) == []
    assert wrong_nouns("A document with the text: 'bear'.", bear) == ["document"]


def test_must_groups_take_any_synonym_and_glued_ocr_words():
    assert names("A photo of a Granny Smith apple.", "apple|fruit")
    assert names("An image with the text 'Region-basedsegmentation'.", "segmentation")
    assert not names("A photo of a Granny Smith.", "apple|fruit")


def test_misses_and_score_count_groups_wrong_nouns_and_people_apart():
    table = case(must=("people", "table|desk"), wrong=("dog",), people=6)
    text = "A photo of four people with a dog."
    assert misses(text, table) == ["-table|desk", "+dog", "people 4!=6"]
    score = Score()
    score.add(text, table)
    score.add("A photo of six people at a table.", table)
    assert (score.photos, score.named, score.wrong, score.wrong_photos) == (2, 1, 1, 1)
    assert (score.counted, score.count_right, score.hits) == (2, 1, 1)


class Exact:
    """Says "a cat" for the pixels it was shown first and "a dog" for any others: a threshold's edge."""

    name = "exact"

    def __init__(self) -> None:
        self.first: np.ndarray | None = None

    def describe(self, images: list[Image.Image]) -> list[str]:
        pixels = np.asarray(images[0].convert("RGB"))
        if self.first is None:
            self.first = pixels
        return ["A photo of a cat." if np.array_equal(pixels, self.first) else "A photo of a dog."]


def test_jpeg_reencoding_is_scored_beside_the_original(capsys: pytest.CaptureFixture[str]):
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    photo = Image.fromarray(noise)
    again = reencoded(photo, 50)
    assert again.size == photo.size and not np.array_equal(np.asarray(again), noise)
    cat = Case("cat", lambda: photo, ("cat",), ("dog",))
    scores = evaluate([Exact()], [cat], show=False, variants=[jpeg_variant(50)])  # type: ignore[list-item]
    assert (scores["exact"].hits, scores["exact"].changed) == (1, 0)
    jpeg = scores["exact (JPEG q50)"]
    assert (jpeg.hits, jpeg.wrong, jpeg.changed) == (0, 1, 1)
    assert "changed 1 / 1" in jpeg.line() and "exact q50" in capsys.readouterr().out
    # A re-encoded row says "changed" even when nothing did; an original row never does.
    assert "changed 0 / 0" in Score(variant=True).line() and "changed" not in Score().line()
    with pytest.raises(SystemExit):
        quality_main(["--jpeg", "100"])


def test_a_thumbnail_is_scored_beside_the_original(capsys: pytest.CaptureFixture[str]):
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 450, 3), dtype=np.uint8))
    assert shrunk(photo, 96).size == (144, 96)
    assert shrunk(photo, 600) is photo  # never enlarged
    cat = Case("cat", lambda: photo, ("cat",), ("dog",))
    scores = evaluate([Exact()], [cat], show=False, variants=[shrink_variant(96)])  # type: ignore[list-item]
    thumb = scores["exact (96 px)"]
    assert (scores["exact"].hits, thumb.hits, thumb.wrong, thumb.changed) == (1, 0, 1, 1)
    assert "exact 96px" in capsys.readouterr().out
    for side in ("8", "4096"):
        with pytest.raises(SystemExit):
            quality_main(["--shrink", side])


def test_manifest_is_consistent():
    sources, photos = load_manifest()
    assert len(photos) >= 60
    assert len({p.name for p in photos}) == len(photos)
    assert {p.source for p in photos} == set(sources)  # no unused source
    assert len({s.spec.split("=")[0] for s in sources.values()}) >= 5  # several packages
    for photo in photos:
        assert len(photo.sha256) == 64 and int(photo.sha256, 16) >= 0
        assert photo.must or photo.wrong, photo.name
        assert all(group and "||" not in group for group in photo.must), photo.name
        assert photo.licence, photo.name


def test_split_is_fixed_balanced_and_blind_to_order():
    _, photos = load_manifest()
    halves = split(photos)
    assert halves == split(list(reversed(photos)))
    for stratum in (True, False):
        sizes = [sum(1 for p in photos if with_people(p) == stratum and halves[p.name] == h) for h in HALVES]
        assert abs(sizes[0] - sizes[1]) <= 1


def test_split_keeps_a_photo_in_its_half_when_others_are_added():
    _, photos = load_manifest()
    before = split(photos)
    # A new photo hashing after every other one joins the end of its stratum's order.
    late = Photo("late", photos[0].source, "x.jpg", "f" * 64, "CC0", ("cat",), (), 0)
    after = split([*photos, late])
    assert {name: after[name] for name in before} == before


def test_extra_photos_stay_out_of_the_halves():
    _, photos = load_manifest()
    dealt = [p for p in photos if not p.half]
    halves = split(photos)
    assert {halves[p.name] for p in photos if p.half} == {"extra"}
    assert {p.name: halves[p.name] for p in dealt} == split(dealt)  # the halves as drawn before them
    # An extra photo that would hash first in the deal moves nobody.
    first = Photo("first", photos[0].source, "x.jpg", "0" * 64, "CC0", ("cat",), (), 0, half="extra")
    assert split([*photos, first]) == {**halves, "first": "extra"}


def rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A Qt resource bundle (format 2) with one directory, ``a``, holding ``files`` (bytes, compressed?)."""
    names, data, offsets = b"", b"", {}

    def name_at(name: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        return offset

    nodes = [struct.pack(">IHII", 0, 2, 1, 1), struct.pack(">IHII", name_at("a"), 2, len(files), 2)]
    for name, (content, packed) in files.items():
        offsets[name] = len(data)
        body = struct.pack(">I", len(content)) + zlib.compress(content) if packed else content
        data += struct.pack(">I", len(body)) + body
        nodes.append(struct.pack(">IHHHI", name_at(name), 1 if packed else 0, 0, 0, offsets[name]))
    tree = b"".join(node + bytes(8) for node in nodes)  # format 2: each node ends in a modification time
    header_size = 20
    tree_at, data_at = header_size, header_size + len(tree)
    return b"qres" + struct.pack(">IIII", 2, tree_at, data_at, data_at + len(data)) + tree + data + names


def test_qt_resources_reads_plain_and_compressed_files():
    bundle = rcc({"pic.webp": (b"RIFF plain", False), "big.webp": (b"RIFF " * 100, True)})
    assert qt_resources(bundle) == {"/a/pic.webp": b"RIFF plain", "/a/big.webp": b"RIFF " * 100}


def test_qt_resources_refuses_a_tree_that_loops_or_overruns():
    bundle = bytearray(rcc({"pic.webp": (b"RIFF plain", False)}))
    tree_at = struct.unpack(">I", bundle[8:12])[0]
    looped = bundle.copy()
    looped[tree_at + 22 + 10 : tree_at + 22 + 14] = struct.pack(">I", 0)  # directory "a" lists the root
    with pytest.raises(FetchError, match="loops or runs past"):
        qt_resources(bytes(looped))
    overrun = bundle.copy()
    overrun[tree_at + 6 : tree_at + 10] = struct.pack(">I", 10**6)  # the root claims a million children
    with pytest.raises(FetchError, match="loops or runs past"):
        qt_resources(bytes(overrun))


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_read_members_from_a_debian_package(tmp_path: Path):
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tf:
        payload = b"\x89PNG fake"
        info = tarfile.TarInfo("./usr/share/pic.png")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(
        b"!<arch>\n"
        + ar_member("debian-binary", b"2.0\n")
        + ar_member("control.tar.xz", b"odd")  # odd size: padded to an even offset
        + ar_member("data.tar.xz", tar_bytes.getvalue())
    )
    assert read_members(deb, ["./usr/share/pic.png"]) == {"./usr/share/pic.png": b"\x89PNG fake"}
