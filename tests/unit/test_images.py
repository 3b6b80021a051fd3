"""Upload checks and decoding for the model, on real files Pillow writes."""

from __future__ import annotations

import gzip
import io
import zipfile

import pytest
from PIL import Image

from imgsvc.errors import ImageTooLarge, UnsupportedImage
from imgsvc.images import inspect_image, load_for_model, sniff_type


def save(tmp_path, img: Image.Image, fmt: str, **kw) -> object:
    path = tmp_path / f"img.{fmt.lower()}"
    img.save(path, format=fmt, **kw)
    return path


def test_inspect_reports_format_and_size(tmp_path):
    info = inspect_image(save(tmp_path, Image.new("RGB", (30, 20)), "PNG"), max_pixels=10_000)
    assert (info.format, info.width, info.height, info.extension) == ("PNG", 30, 20, ".png")


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = save(tmp_path, Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(ImageTooLarge):
        inspect_image(path, max_pixels=19_999)
    assert inspect_image(path, max_pixels=20_000).width == 200


def test_truncated_file_is_unsupported(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnsupportedImage):
        inspect_image(path, max_pixels=10**7)


def test_exif_orientation_is_applied_and_metadata_dropped(tmp_path):
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path, img, "JPEG", exif=exif.tobytes())
    out = load_for_model(path, max_pixels=10**7, max_side=1024)
    assert out.size == (10, 40)
    assert out.mode == "RGB" and "exif" not in out.info


def test_transparency_is_flattened_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = load_for_model(save(tmp_path, img, "PNG"), max_pixels=10**7, max_side=1024)
    assert out.getpixel((4, 4)) == (255, 255, 255)


def test_large_images_are_downscaled_for_the_model(tmp_path):
    path = save(tmp_path, Image.new("RGB", (3000, 1500)), "PNG")
    assert load_for_model(path, max_pixels=10**7, max_side=512).size == (512, 256)


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("P", (10, 10), i) for i in (1, 2)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_for_model(path, max_pixels=10**7, max_side=64).size == (10, 10)


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
        (gzip.compress(b"x"), "gzip-compressed data"),
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
            pillow_bytes("PNG")[:60],
            "the file looks like a PNG image but cannot be decoded (it may be damaged or cut short)",
        ),
    ],
)
def test_unsupported_files_are_explained_without_python_internals(tmp_path, content, message):
    path = tmp_path / "upload"
    path.write_bytes(content)
    for check in (lambda: inspect_image(path, 10**7), lambda: load_for_model(path, 10**7, 512)):
        with pytest.raises(UnsupportedImage) as refused:
            check()
        assert refused.value.message == message
        assert refused.value.details["allowed"] == ["JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF"]
