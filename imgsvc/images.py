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


#: The allowed formats as a person reads them, for error messages.
ALLOWED_NAMES = ["WebP" if name == "WEBP" else name for name in ALLOWED_FORMATS]

# What people upload by mistake, recognised by its first bytes: (offset, signature, in words).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"%PDF-", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"PK\x05\x06", "a ZIP archive"),
    (0, b"\x1f\x8b", "gzip-compressed data"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"\x00\x00\x01\x00", "an ICO icon"),
    (0, b"\x00\x00\x02\x00", "a CUR cursor"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Microsoft Office document"),
    (0, b"{\\rtf", "an RTF document"),
    (0, b"\x7fELF", "an executable program"),
    (0, b"OggS", "Ogg audio or video"),
    (0, b"fLaC", "FLAC audio"),
    (0, b"\x1aE\xdf\xa3", "a Matroska or WebM video"),
    (8, b"WEBP", "a WebP image"),  # RIFF containers: the form type follows the size
    (8, b"WAVE", "WAV audio"),
    (8, b"AVI ", "an AVI video"),
)
# Two-byte signatures that ordinary text can start with: tried only on what is not text.
_WEAK_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"BM", "a BMP image"),
    (b"MZ", "a Windows program"),
    (b"ID3", "MP3 audio"),
)
# ISO media files (HEIC, AVIF, MP4 ...) say what they are in their "ftyp" box's brands.
_BRANDS: tuple[tuple[frozenset[bytes], str], ...] = (
    (frozenset({b"avif", b"avis"}), "an AVIF image"),
    (frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}), "a HEIC image"),
    (frozenset({b"qt  "}), "a QuickTime video"),
    (frozenset({b"M4A ", b"M4B "}), "M4A audio"),
    (
        frozenset({b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash", b"3gp4", b"3gp5"}),
        "an MP4 video",
    ),
)


def sniff_type(head: bytes) -> str:
    """What a file's first bytes say it is, in words ("a PDF document", "plain text" ...).

    Only for telling a person what they sent: whether an upload is accepted is decided by
    decoding it against the allow-list, never by this guess.
    """
    for offset, signature, name in _SIGNATURES:
        if head.startswith(signature, offset) and (offset == 0 or head.startswith(b"RIFF")):
            return name
    if head[4:8] == b"ftyp":
        box = head[8 : min(len(head), int.from_bytes(head[:4], "big"), 64)]
        brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
        return next((name for known, name in _BRANDS if brands & known), "an ISO media file (MP4 family)")
    text = _as_text(head)
    if text is None:
        return next((name for sig, name in _WEAK_SIGNATURES if head.startswith(sig)), "unknown binary data")
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith(("<svg", "<?xml", "<!doctype svg")) and "<svg" in start:
        return "an SVG image"
    if start.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "an HTML document"
    if start.startswith("<?xml"):
        return "an XML document"
    return "plain text"


def _as_text(head: bytes) -> str | None:
    """UTF-8 (or UTF-16 with a BOM) without control characters; a cut-off last character is fine."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head[: len(head) // 2 * 2].decode("utf-16", errors="ignore")
    else:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 3:
                return None
            text = head[: exc.start].decode("utf-8")
    if not text or any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text


def unsupported_image(path: Path) -> UnsupportedImage:
    """The 415 for a file Pillow would not decode: what it seems to be, and what is allowed.

    Pillow's own message (exception type, file name) means nothing to the person who sent it.
    """
    with path.open("rb") as file:
        detected = sniff_type(file.read(512))
    allowed = f"{', '.join(ALLOWED_NAMES[:-1])} and {ALLOWED_NAMES[-1]}"
    if detected.removeprefix("a ").removesuffix(" image") in ALLOWED_NAMES:
        message = f"the file looks like {detected} but cannot be decoded (it may be damaged or cut short)"
    else:
        message = f"the file is {detected}; accepted formats are {allowed}"
    return UnsupportedImage(message, detected=detected, allowed=ALLOWED_NAMES)


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
            raise unsupported_image(path) from exc
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
            raise unsupported_image(path) from exc
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
