"""The web side's header-only check, on real files Pillow writes and on crafted bombs."""

from __future__ import annotations

import gzip
import io
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from bench.bombs import declared_png, progressive_scan_bomb
from imgsvc.config import PROJECT_ROOT
from imgsvc.errors import ImageTooLarge, UnsupportedImage
from imgsvc.images import MAX_ELEMENTS, MAX_JPEG_SCANS, inspect_image, sniff_type

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


def test_bytes_after_a_jpeg_end_are_ignored(tmp_path):
    """Phones append a second image (MPO) or trailing data after the first image's EOI."""
    buffer = io.BytesIO()
    noise().save(buffer, "JPEG")
    path = tmp_path / "trailing.jpg"
    path.write_bytes(buffer.getvalue() + b"\x00garbage" * 100)
    assert inspect_image(path, **LIMITS).format == "JPEG"


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
