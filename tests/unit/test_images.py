"""Upload checks and decoding for the model, on real files Pillow writes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imgsvc.errors import ImageTooLarge, UnsupportedImage
from imgsvc.images import inspect_image, load_for_model


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
