"""Pillow handling shared by the web side (check an upload) and the worker (decode for the model).

Uploads are sniffed by content, never by name or Content-Type, against an allow-list,
and refused before a full decode when their pixel count says "decompression bomb".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from imgsvc.errors import ImageTooLarge, UnsupportedImage

ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tiff",
}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def inspect_image(path: Path, max_pixels: int) -> ImageInfo:
    """Check that ``path`` holds an allowed, decodable, not-too-large image.

    A cheap, reduced decode (JPEG draft mode) still catches truncated files, so a
    worker never receives an upload the web side could have refused.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=list(ALLOWED_FORMATS)) as img:
                info = ImageInfo(img.format or "", img.width, img.height)
                if info.width * info.height > max_pixels:
                    raise ImageTooLarge(
                        f"image has {info.width}x{info.height} pixels; the limit is {max_pixels} pixels",
                        width=info.width,
                        height=info.height,
                        max_pixels=max_pixels,
                    )
                if info.format == "JPEG":
                    img.draft("RGB", (max(1, info.width // 8), max(1, info.height // 8)))
                img.load()
        except (ImageTooLarge, UnsupportedImage):
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageTooLarge(f"image refused as a decompression bomb: {_reason(exc, path)}") from exc
        except Exception as exc:  # Pillow raises many types for bad input
            raise UnsupportedImage(
                "the file is not an image we can read "
                f"(allowed: {', '.join(sorted(ALLOWED_FORMATS))}); {_reason(exc, path)}",
            ) from exc
    if info.format not in ALLOWED_FORMATS:
        raise UnsupportedImage(f"image format {info.format} is not allowed")
    return info


def load_for_model(path: Path, max_pixels: int, max_side: int) -> Image.Image:
    """Decode fully, apply EXIF orientation, drop metadata, RGB, and bound the size.

    Downscaling here keeps a 40-megapixel photo from costing the model more than a
    1-megapixel one; every backend resizes to far less anyway.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=list(ALLOWED_FORMATS)) as img:
                if img.width * img.height > max_pixels:
                    raise ImageTooLarge(f"image has {img.width}x{img.height} pixels")
                if img.format == "JPEG" and max(img.size) > 2 * max_side:
                    img.draft("RGB", (max_side, max_side))
                img.seek(0)  # GIF/TIFF: the first frame
                oriented = ImageOps.exif_transpose(img)
                rgb = _to_rgb(oriented)
        except ImageTooLarge:
            raise
        except Exception as exc:
            raise UnsupportedImage(f"cannot decode image: {_reason(exc, path)}") from exc
    rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    rgb.info.clear()
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white: a black background would change the description."""
    if img.mode in {"RGBA", "LA"} or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _reason(exc: BaseException, path: Path) -> str:
    """Pillow's message, minus our file path: server paths are nobody's business."""
    return f"{type(exc).__name__}: {str(exc).replace(str(path), 'upload')}"
