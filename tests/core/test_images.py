"""The web side's header-only check, on real files Pillow writes and on crafted bombs."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bench.bombs import declared_png, progressive_scan_bomb, tiff_tag_bomb
from imgsvc.config import PROJECT_ROOT
from imgsvc.errors import ImageTooLarge, UnsupportedImage
from imgsvc.images import (
    MAX_ELEMENTS,
    MAX_JPEG_SCANS,
    MAX_TIFF_STRIPS,
    ImageInfo,
    _Walker,
    inspect_image,
    sniff_type,
)

LIMITS = {"max_pixels": 40_000_000, "max_frames": 1000}


def noise(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.effect_noise(size, 60).convert("RGB")


def frames(count: int, mode: str = "RGB") -> list[Image.Image]:
    return [Image.new("RGB", (12, 10), (i * 40 % 256, 90, 10)).convert(mode) for i in range(count)]


#: name -> (Pillow format, save options, expected format, frames, scans)
SAMPLES = {
    "baseline.jpg": ("JPEG", {}, "JPEG", 1, 1),
    "progressive.jpg": ("JPEG", {"progressive": True}, "JPEG", 1, 10),
    "grey-progressive.jpg": ("JPEG", {"progressive": True, "mode": "L"}, "JPEG", 1, 6),
    "cmyk-progressive.jpg": ("JPEG", {"progressive": True, "mode": "CMYK"}, "JPEG", 1, 18),
    "plain.png": ("PNG", {}, "PNG", 1, 1),
    "interlaced.png": ("PNG", {"interlace": True}, "PNG", 1, 1),
    "still.gif": ("GIF", {}, "GIF", 1, 1),
    "lossy.webp": ("WEBP", {}, "WEBP", 1, 1),
    "lossless.webp": ("WEBP", {"lossless": True}, "WEBP", 1, 1),
    "alpha.webp": ("WEBP", {"mode": "RGBA"}, "WEBP", 1, 1),
    "plain.bmp": ("BMP", {}, "BMP", 1, 1),
    "plain.tiff": ("TIFF", {}, "TIFF", 1, 1),
    "lzw.tiff": ("TIFF", {"compression": "tiff_lzw"}, "TIFF", 1, 1),
    "animated.gif": ("GIF", {"frames": 5}, "GIF", 5, 1),
    "animated.webp": ("WEBP", {"frames": 4}, "WEBP", 4, 1),
    "animated.png": ("PNG", {"frames": 3}, "PNG", 3, 1),
    "pages.tiff": ("TIFF", {"frames": 3}, "TIFF", 3, 1),
}


def sample(tmp_path: Path, name: str) -> Path:
    fmt, options, *_ = SAMPLES[name]
    options = dict(options)
    mode = options.pop("mode", "RGB")
    count = options.pop("frames", 0)
    path = tmp_path / name
    if count:
        first, *rest = frames(count, mode)
        first.save(path, fmt, save_all=True, append_images=rest, **options)
    else:
        noise().convert(mode).save(path, fmt, **options)
    return path


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_allowed_format_is_read_from_its_headers(tmp_path, name):
    _, _, fmt, frame_count, scans = SAMPLES[name]
    info = inspect_image(sample(tmp_path, name), **LIMITS)
    size = (12, 10) if frame_count > 1 else (64, 48)
    assert (info.format, (info.width, info.height), info.frames, info.scans) == (
        fmt,
        size,
        frame_count,
        scans,
    )
    with Image.open(tmp_path / name) as img:  # Pillow agrees
        assert (img.width, img.height, getattr(img, "n_frames", 1)) == (info.width, info.height, info.frames)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_truncated_files_are_refused_as_unsupported(tmp_path, name):
    data = sample(tmp_path, name).read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedImage, match=r"truncated|ends"):
        inspect_image(cut, **LIMITS)


def test_the_check_never_decodes_or_even_imports_pillow(tmp_path, webp_bomb):
    """The web tier reads headers only; the review's WebP cost the web process 612 MB to decode."""
    path = tmp_path / "bomb.webp"
    path.write_bytes(webp_bomb)
    probe = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from imgsvc.images import inspect_image
        info = inspect_image(Path({str(path)!r}), 40_000_000, 1000)
        rss = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(info.width, info.height, "PIL" in sys.modules, int(rss.split()[1]) // 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:3] == ["6300", "6300", "False"]
    assert int(out[3]) < 100  # MB: a bare interpreter, where a decode peaked at 612


def test_progressive_jpeg_with_absurd_scan_count_is_a_bomb(tmp_path, scan_bomb):
    """The review's 1.8 MB file: one AC scan repeated 20,000x, 42 s of decode in the web request."""
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(scan_bomb)
    with pytest.raises(ImageTooLarge, match=f"more than {MAX_JPEG_SCANS} scans"):
        inspect_image(bomb, **LIMITS)
    allowed = tmp_path / "allowed.jpg"
    allowed.write_bytes(progressive_scan_bomb(64, MAX_JPEG_SCANS - 9))  # plus the other 9 scans
    assert inspect_image(allowed, **LIMITS).scans == MAX_JPEG_SCANS


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(declared_png(200, 100))
    with pytest.raises(ImageTooLarge):
        inspect_image(path, max_pixels=19_999, max_frames=1)
    assert inspect_image(path, max_pixels=20_000, max_frames=1).width == 200
    huge = tmp_path / "huge.png"
    huge.write_bytes(declared_png(100_000, 100_000))
    with pytest.raises(ImageTooLarge, match="100000x100000"):
        inspect_image(huge, **LIMITS)


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp", "animated.png", "pages.tiff"])
def test_too_many_frames_is_a_bomb(tmp_path, name):
    path = sample(tmp_path, name)
    count = SAMPLES[name][3]
    assert inspect_image(path, max_pixels=10**6, max_frames=count).frames == count
    with pytest.raises(ImageTooLarge, match="frames"):
        inspect_image(path, max_pixels=10**6, max_frames=count - 1)


def test_a_frame_larger_than_the_limit_inside_a_small_gif_is_refused(tmp_path):
    """Pillow grows a GIF's canvas to hold a frame that sticks out of it."""
    data = bytearray(sample(tmp_path, "still.gif").read_bytes())
    descriptor = data.index(b"\x2c", 13 + 3 * 256)  # after the global colour table
    struct.pack_into("<HH", data, descriptor + 5, 60000, 60000)  # the frame's width and height
    path = tmp_path / "frame.gif"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageTooLarge, match="frame"):
        inspect_image(path, **LIMITS)


def test_a_gif_built_of_millions_of_tiny_blocks_is_refused(tmp_path):
    data = bytearray(sample(tmp_path, "still.gif").read_bytes())
    data[-1:-1] = b"\x21\xfe" + b"\x01x" * (MAX_ELEMENTS + 1) + b"\x00"  # a comment, one byte per sub-block
    path = tmp_path / "blocks.gif"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedImage, match="sub-blocks"):
        inspect_image(path, **LIMITS)


@pytest.mark.parametrize(
    "content",
    [
        b"hello, world",
        b"%PDF-1.7\n",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        b"GIF89a\x01\x00",
        b"RIFF\x00\x00\x00\x00WEBP",
    ],
)
def test_non_images_and_broken_headers_are_unsupported(tmp_path, content):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(UnsupportedImage) as refused:
        inspect_image(path, **LIMITS)
    assert refused.value.details["allowed"] == ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF"]


def test_a_tiff_whose_directories_loop_is_refused(tmp_path):
    data = bytearray(sample(tmp_path, "plain.tiff").read_bytes())
    (first,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, first)
    struct.pack_into("<I", data, first + 2 + 12 * count, first)  # next IFD = this one
    path = tmp_path / "loop.tiff"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedImage, match="loop"):
        inspect_image(path, **LIMITS)


# -- TIFF tag arrays (issue 23, row 1) ------------------------------------------------------------------
def tiff_of(entries: list[tuple[int, int, int, int]], tail: bytes = b"") -> bytes:
    """A little-endian TIFF of one IFD of (tag, type, count, value) entries, then ``tail``."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail


def test_the_tiff_tag_array_bomb_is_refused_without_reading_its_arrays(tmp_path):
    """The review's 9.5 MB file: 3 x 65,530 StripOffsets arrays of 3.6 M values after a 1x1 page.

    Before the fix every array was unpacked (an hour of CPU); now the repeated tag is refused.
    """
    path = tmp_path / "bomb.tiff"
    path.write_bytes(tiff_tag_bomb())
    with pytest.raises(UnsupportedImage, match="lists tag 273 twice in one directory"):
        inspect_image(path, **LIMITS)


def test_the_bomb_s_valid_first_page_alone_is_accepted(tmp_path):
    path = tmp_path / "page.tiff"
    path.write_bytes(tiff_tag_bomb(pages=0, values=4))
    assert Image.open(path).size == (1, 1)
    assert inspect_image(path, **LIMITS) == ImageInfo("TIFF", 1, 1)


def test_a_tag_repeated_in_one_directory_is_refused(tmp_path):
    size = [(256, 3, 1, 1), (257, 3, 1, 1)]
    path = tmp_path / "twice.tiff"
    path.write_bytes(tiff_of([*size, (257, 3, 1, 5)]))
    with pytest.raises(UnsupportedImage, match="lists tag 257 twice"):
        inspect_image(path, **LIMITS)


def test_only_the_first_value_of_a_size_array_is_read(tmp_path, monkeypatch):
    """A width array of 3.6 M values: one is read (the rest of the array is never unpacked)."""
    values = 3_600_000
    region = 8 + 2 + 2 * 12 + 4
    path = tmp_path / "wide.tiff"
    path.write_bytes(
        tiff_of([(256, 3, values, region), (257, 3, 1, 1)], struct.pack("<H", 7) + bytes(values * 2))
    )
    reads: list[str] = []
    original = _Walker.read
    monkeypatch.setattr(
        _Walker, "read", lambda self, fmt, offset: reads.append(fmt) or original(self, fmt, offset)
    )
    assert inspect_image(path, **LIMITS) == ImageInfo("TIFF", 7, 1)
    assert all(len(fmt) <= 4 for fmt in reads), reads  # "<1H", never "<3600000H"


def test_more_strips_than_the_limit_on_the_first_page_are_refused(tmp_path):
    count = MAX_TIFF_STRIPS + 1
    region = 8 + 2 + 4 * 12 + 4
    entries = [(256, 3, 1, 1), (257, 3, 1, 1), (273, 4, count, region), (279, 4, count, region)]
    path = tmp_path / "strips.tiff"
    path.write_bytes(tiff_of(entries, bytes(count * 4)))
    with pytest.raises(
        UnsupportedImage, match=f"lists {count} strips or tiles; the limit is {MAX_TIFF_STRIPS}"
    ):
        inspect_image(path, **LIMITS)


def test_strip_values_count_toward_the_element_limit(tmp_path):
    """Strip and tile arrays each under the cap: their values together pass MAX_ELEMENTS."""
    count = 60_000
    region = 8 + 2 + 6 * 12 + 4
    arrays = [(tag, 4, count, region) for tag in (273, 279, 324, 325)]
    assert count < MAX_TIFF_STRIPS and 4 * count > MAX_ELEMENTS
    path = tmp_path / "elements.tiff"
    path.write_bytes(tiff_of([(256, 3, 1, 1), (257, 3, 1, 1), *arrays], bytes(count * 4)))
    with pytest.raises(UnsupportedImage, match=f"more than {MAX_ELEMENTS} TIFF strip and tile entries"):
        inspect_image(path, **LIMITS)


def test_a_header_check_past_its_deadline_is_refused_as_a_bomb(tmp_path):
    path = sample(tmp_path, "pages.tiff")
    with pytest.raises(ImageTooLarge, match="ran out of its time budget"):
        inspect_image(path, **LIMITS, deadline=time.monotonic() - 1)
    assert inspect_image(path, **LIMITS, deadline=time.monotonic() + 60).frames == 3


def test_a_tiff_of_many_strips_written_by_pillow_is_accepted(tmp_path):
    path = tmp_path / "strips.tiff"
    noise((300, 400)).save(
        path, "TIFF", compression="tiff_adobe_deflate", tiffinfo={278: 16}
    )  # 16 rows a strip
    with Image.open(path) as image:
        strips = len(image.tag_v2[273])
    assert strips == 25
    assert inspect_image(path, **LIMITS) == ImageInfo("TIFF", 300, 400)


def test_a_multi_page_tiff_of_pages_of_different_sizes_is_accepted(tmp_path):
    path = tmp_path / "pages.tiff"
    first, *rest = [noise((20 + i, 30 + i)) for i in range(4)]
    first.save(path, "TIFF", save_all=True, append_images=rest, compression="tiff_lzw")
    assert inspect_image(path, **LIMITS) == ImageInfo("TIFF", 20, 30, frames=4)


# -- trailing data (issue 23, row 4) --------------------------------------------------------------------
TRAILING = ["baseline.jpg", "progressive.jpg", "plain.png", "animated.png", "still.gif", "animated.gif"]
TRAILING += ["lossy.webp", "animated.webp", "plain.bmp"]


#: What a phone appends to a motion photo: an MP4 (an ISO-BMFF ``ftyp`` box, then its media).
MP4 = struct.pack(">I4s4sI4s", 20, b"ftyp", b"mp42", 0, b"isom") + struct.pack(">I4s", 16, b"mdat") + b"v" * 8
TAILS = {
    "none": b"",
    "a few zeros": bytes(4),
    "PADDING-7 x 60": b"PADDING-7" * 60,
    "9 MB of zeros": bytes(9 * 1024 * 1024),
    "an MP4 (motion photo)": MP4,
}


@pytest.mark.parametrize("name", TRAILING)
@pytest.mark.parametrize("tail", list(TAILS.values()), ids=list(TAILS))
def test_the_walk_reports_where_the_image_ends_and_accepts_what_follows(tmp_path, name, tail):
    """The review's uploads (PADDING-%d after a JPEG; 600 B + 9 MB of zeros) and a phone's
    motion photo are read like the image alone; ``end`` is where the submit path cuts them."""
    path = sample(tmp_path, name)
    image = path.read_bytes()
    alone = inspect_image(path, **LIMITS)
    path.write_bytes(image + tail)
    info = inspect_image(path, **LIMITS)
    assert info == alone and info.format == SAMPLES[name][2]
    assert info.end == alone.end == len(image)


def test_a_tiff_ends_with_its_file(tmp_path):
    """A TIFF's strips are found by offsets and may lie anywhere: nothing after it is cut."""
    path = sample(tmp_path, "plain.tiff")
    path.write_bytes(path.read_bytes() + b"PADDING-7" * 60)
    assert inspect_image(path, **LIMITS).end == path.stat().st_size


def test_jpeg_streams_after_a_jpeg_are_part_of_the_image_as_an_mpo_s_images(tmp_path):
    """Cameras store an MPO's second image (and some a preview) right after the first's EOI:
    they stay; what follows the last one does not."""
    first, second = jpeg_bytes_of(noise((64, 48))), jpeg_bytes_of(noise((32, 24)))
    path = tmp_path / "two.jpg"
    path.write_bytes(first + second + second + b"junk" * 200)
    info = inspect_image(path, **LIMITS)
    assert info == ImageInfo("JPEG", 64, 48)
    assert info.end == len(first + second + second)


def test_an_mpo_written_by_pillow_is_accepted(tmp_path):
    path = tmp_path / "pair.mpo"
    first, second = noise((40, 30)), noise((40, 30))
    first.save(path, "MPO", save_all=True, append_images=[second])
    with Image.open(path) as image:
        assert image.format == "MPO" and image.n_frames == 2
    info = inspect_image(path, **LIMITS)
    assert info == ImageInfo("JPEG", 40, 30) and info.end == path.stat().st_size


def test_a_jpeg_after_a_jpeg_is_checked_like_the_first(tmp_path):
    """What follows is walked: a bomb appended to a small JPEG is no way around the scan limit."""
    path = tmp_path / "hidden-bomb.jpg"
    path.write_bytes(jpeg_bytes_of() + progressive_scan_bomb(64, MAX_JPEG_SCANS + 1))
    with pytest.raises(ImageTooLarge, match="scans"):
        inspect_image(path, **LIMITS)


def test_a_bmp_s_colour_profile_after_its_rows_is_part_of_the_image(tmp_path):
    """BITMAPV5HEADER may embed an ICC profile after the pixel rows, found by its offset."""
    path = tmp_path / "v5.bmp"
    noise((8, 4)).save(path, "BMP")
    data = bytearray(path.read_bytes())
    rows_end = len(data)
    header = bytearray(124)
    header[:40] = data[14:54]
    struct.pack_into("<I", header, 0, 124)
    profile = b"p" * 2000
    struct.pack_into("<II", header, 112, rows_end + 84 - 14, len(profile))  # relative to the DIB header
    body = data[:14] + header + data[54:] + profile
    struct.pack_into("<I", body, 10, 14 + 124)  # the rows moved by the longer header
    path.write_bytes(bytes(body))
    assert inspect_image(path, **LIMITS) == ImageInfo("BMP", 8, 4)
    path.write_bytes(bytes(body) + b"x" * 1000)
    assert inspect_image(path, **LIMITS).end == len(body)


def pillow_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photos/cat.jpg", b"not really")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (pillow_bytes("PDF"), "a PDF document"),
        (b"Shopping list:\n- milk\n- bread, caf\xc3\xa9 cr\xc3", "plain text"),  # UTF-8 cut mid-character
        ("Liste de courses\n".encode("utf-16"), "plain text"),
        (b"BMW 320d, 2019\n", "plain text"),  # starts like a BMP, reads like text
        (b"<!DOCTYPE html>\n<html><body>404</body></html>", "an HTML document"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "an SVG image"),
        (b"<svg viewBox='0 0 1 1'></svg>", "an SVG image"),
        (b'<?xml version="1.0"?><feed/>', "an XML document"),
        (zip_bytes(), "a ZIP archive"),
        (gzip.compress(b"x", mtime=0), "gzip-compressed data"),
        (pillow_bytes("ICO"), "an ICO icon"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "a HEIC image"),
        (
            pillow_bytes("AVIF") if "AVIF" in Image.SAVE else b"\x00\x00\x00\x1cftypavif\0\0\0\0avifmif1",
            "an AVIF image",
        ),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "an MP4 video"),
        (pillow_bytes("JPEG")[:40], "a JPEG image"),
        (pillow_bytes("WEBP")[:40], "a WebP image"),
        (pillow_bytes("BMP")[:40], "a BMP image"),
        (b"\x7fELF\x02\x01\x01", "an executable program"),
        (bytes(range(256)), "unknown binary data"),
        (b"", "unknown binary data"),
    ],
)
def test_sniff_type_names_what_people_send_by_mistake(head, expected):
    assert sniff_type(head) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"just some notes\n" * 30,
            "the file is plain text; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF",
        ),
        (
            pillow_bytes("ICO"),
            "the file is an ICO icon; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF",
        ),
        (
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
            "the file is a HEIC image; accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF",
        ),
    ],
)
def test_unsupported_files_are_explained_without_python_internals(tmp_path, content, message):
    """The web's header check and the worker's (and CLI's) decoder say the same, in words."""
    from imgsvc.decoding import DecodeError, load_for_model

    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(UnsupportedImage) as refused:
        inspect_image(path, **LIMITS)
    assert refused.value.message == message
    assert refused.value.details["allowed"] == ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF"]
    with pytest.raises(DecodeError) as undecodable:
        load_for_model(path, 10**7, 512)
    assert str(undecodable.value) == message


def test_a_broken_image_of_an_accepted_format_is_named_as_such(tmp_path):
    from imgsvc.decoding import DecodeError, load_for_model

    path = tmp_path / "upload"
    path.write_bytes(pillow_bytes("PNG")[:60])
    with pytest.raises(UnsupportedImage) as refused:
        inspect_image(path, **LIMITS)
    assert refused.value.message == (
        "the file cannot be read as an image: a PNG chunk ends past the end of the file (truncated file)"
    )
    with pytest.raises(DecodeError, match=r"^the file looks like a PNG image but cannot be decoded$"):
        load_for_model(path, 10**7, 512)


# -- JPEG structure: what the marker walk accepts and refuses (found by `make mutate`) -----------------
def jpeg_bytes_of(image: Image.Image | None = None, **options) -> bytes:
    buffer = io.BytesIO()
    (image or noise()).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def first_marker(data: bytes, marker: int) -> int:
    """Offset of the first segment with ``marker`` (before any entropy-coded data)."""
    return data.index(bytes([0xFF, marker]))


def com_segment(payload: bytes) -> bytes:
    return b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload


def inspect_bytes(tmp_path: Path, data: bytes):
    path = tmp_path / "probe.jpg"
    path.write_bytes(data)
    return inspect_image(path, **LIMITS)


@pytest.mark.parametrize("payload", [b"", b"x" * 40_000], ids=["empty segment", "40 KB segment"])
def test_jpeg_segments_of_every_legal_length_are_read(tmp_path, payload):
    """An empty comment (length 2) and a segment over 32 KB (EXIF blocks reach 64 KB) are legal."""
    data = jpeg_bytes_of()
    info = inspect_bytes(tmp_path, data[:2] + com_segment(payload) + data[2:])
    assert (info.format, info.width, info.height) == ("JPEG", 64, 48)


def test_a_standalone_marker_between_scans_does_not_end_the_scan_count(tmp_path):
    """A TEM marker (no length) may sit between segments: the walk goes on counting scans after it."""
    bomb = progressive_scan_bomb(64, MAX_JPEG_SCANS + 10)
    second_scan = bomb.index(b"\xff\xda", first_marker(bomb, 0xDA) + 2)
    with pytest.raises(ImageTooLarge, match=f"more than {MAX_JPEG_SCANS} scans"):
        inspect_bytes(tmp_path, bomb[:second_scan] + b"\xff\x01" + bomb[second_scan:])


def _junk_after_first_segment(data: bytes) -> bytes:
    (length,) = struct.unpack_from(">H", data, 4)
    return data[: 4 + length] + b"\x00" + data[4 + length :]


def _two_frames(data: bytes) -> bytes:
    sof = first_marker(data, 0xC0)
    (length,) = struct.unpack_from(">H", data, sof + 2)
    return data[: sof + 2 + length] + data[sof:]


def _scan_first(data: bytes) -> bytes:
    sof, sos = first_marker(data, 0xC0), first_marker(data, 0xDA)
    return data[:sof] + data[sos:]


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (_junk_after_first_segment, "a JPEG marker is missing where one must be"),
        (lambda d: d[:2] + b"\xff\xfe\x00\x01" + d[2:], "a JPEG segment has an impossible length"),
        (_two_frames, "the JPEG has two frame headers"),
        (_scan_first, "a JPEG scan comes before the frame header"),
        (lambda d: d[: first_marker(d, 0xDA)] + b"\xff\xd9", "the JPEG has no image data"),
        (lambda d: d[: first_marker(d, 0xDA) + 40], "the JPEG data ends inside a scan"),
    ],
    ids=["no marker", "impossible length", "two frames", "scan first", "no scan", "cut in a scan"],
)
def test_a_broken_jpeg_is_refused_with_what_is_wrong(tmp_path, broken, reason):
    with pytest.raises(UnsupportedImage) as refused:
        inspect_bytes(tmp_path, broken(jpeg_bytes_of()))
    assert refused.value.message.startswith(f"the file cannot be read as an image: {reason}")


def test_an_empty_file_is_refused_as_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(UnsupportedImage) as refused:
        inspect_image(path, **LIMITS)
    assert refused.value.message == "the file cannot be read as an image: the file is empty"


def with_frame_size(data: bytes, width: int, height: int) -> bytes:
    sof = first_marker(data, 0xC0)
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_a_jpeg_wider_than_32767_pixels_is_read_as_such(tmp_path):
    """Sizes are unsigned 16-bit: 40000 x 1000 is exactly the default pixel limit, and allowed."""
    info = inspect_bytes(tmp_path, with_frame_size(jpeg_bytes_of(), 40_000, 1000))
    assert (info.width, info.height) == (40_000, 1000)


def test_a_jpeg_with_an_empty_frame_is_refused(tmp_path):
    with pytest.raises(UnsupportedImage) as refused:
        inspect_bytes(tmp_path, with_frame_size(jpeg_bytes_of(), 0, 48))
    assert refused.value.message.endswith("the JPEG header gives an empty size 0x48")


def test_a_jpeg_of_countless_tiny_segments_is_refused(tmp_path):
    data = jpeg_bytes_of()
    padded = data[:2] + com_segment(b"") * (MAX_ELEMENTS + 1) + data[2:]
    with pytest.raises(UnsupportedImage) as refused:
        inspect_bytes(tmp_path, padded)
    assert refused.value.message.endswith(
        f"it has more than {MAX_ELEMENTS} JPEG markers; real images have far fewer"
    )


def test_the_scan_bomb_413_says_why_and_names_the_limit(tmp_path):
    with pytest.raises(ImageTooLarge) as refused:
        inspect_bytes(tmp_path, progressive_scan_bomb(64, MAX_JPEG_SCANS + 10))
    assert refused.value.message.endswith("refused as a decompression bomb")
    assert refused.value.details == {"max_scans": MAX_JPEG_SCANS}


# -- mutation audit gaps (issue 23's last section) ------------------------------------------------------
def test_a_gif_frame_placed_far_outside_a_small_canvas_is_refused(tmp_path):
    """Pillow grows the canvas to hold the frame: a 10x10 GIF with a frame at (60000, 60000) is 60010^2."""
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    descriptor = data.index(b"\x2c" + struct.pack("<HHHH", 0, 0, 10, 10))
    struct.pack_into("<HH", data, descriptor + 1, 60_000, 60_000)
    path = tmp_path / "far.gif"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageTooLarge, match="an animation frame has 60010x60010 pixels"):
        inspect_image(path, **LIMITS)


def test_a_webp_with_an_odd_length_chunk_is_read_past_its_padding(tmp_path):
    """RIFF pads a chunk of odd length with one byte: a 13-byte ICC profile is followed by a pad."""
    path = tmp_path / "icc.webp"
    Image.new("RGB", (10, 12)).save(path, "WEBP", icc_profile=b"x" * 13)
    assert b"ICCP\x0d\x00\x00\x00" in path.read_bytes()
    assert inspect_image(path, **LIMITS) == ImageInfo("WEBP", 10, 12)


def test_a_top_down_bmp_is_accepted_with_its_height(tmp_path):
    """A negative height in the header means rows stored top-down (Windows writes them)."""
    buffer = io.BytesIO()
    noise((16, 9)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue())
    struct.pack_into("<i", data, 22, -9)
    path = tmp_path / "top-down.bmp"
    path.write_bytes(bytes(data))
    with Image.open(path) as image:
        assert image.size == (16, 9)
    assert inspect_image(path, **LIMITS) == ImageInfo("BMP", 16, 9)


# -- counts read from a file bound no loop before they are capped ------------------------------------
@pytest.mark.parametrize(("fill", "accepted"), [(1000, True), (MAX_ELEMENTS + 1, False)])
def test_a_run_of_jpeg_fill_bytes_counts_toward_the_element_limit(tmp_path, fill, accepted):
    """0xFF fill bytes may precede a marker; a 10 MB run of them cost 0.6 s of CPU a file, byte by byte."""
    data = jpeg_bytes_of()
    sos = first_marker(data, 0xDA)
    path = tmp_path / "fill.jpg"
    path.write_bytes(data[:sos] + b"\xff" * fill + data[sos:])
    if accepted:
        assert inspect_image(path, **LIMITS).format == "JPEG"
    else:
        with pytest.raises(UnsupportedImage, match=f"more than {MAX_ELEMENTS} JPEG fill bytes"):
            inspect_image(path, **LIMITS)


def test_a_jpeg_of_nothing_but_fill_bytes_is_truncated(tmp_path):
    path = tmp_path / "all-fill.jpg"
    path.write_bytes(b"\xff\xd8" + b"\xff" * 5000)
    with pytest.raises(UnsupportedImage, match="the JPEG data ends early"):
        inspect_image(path, **LIMITS)
