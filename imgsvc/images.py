"""The web side's image check: format, size, frames and scans, read from headers only.

The web process never decodes a pixel: a hostile file can make a decoder spend minutes
of CPU (a progressive JPEG that repeats one scan 20,000 times) or gigabytes of memory (a
tiny WebP with a 40-megapixel canvas), and Pillow's C decoders release the GIL, so
gunicorn's timeout never fires. Instead each format's structure is walked here (JPEG
markers, PNG chunks, GIF blocks, RIFF chunks, TIFF IFDs, the BMP header) without
decompressing anything: a file whose structure does not hold together is refused (415),
and one that declares too many pixels, frames or scans is refused as a bomb (413).

The walk also finds where the image ends (:attr:`ImageInfo.end`: JPEG after EOI, and after
any JPEG streams that follow it, as in an MPO; PNG after IEND; GIF after its trailer; WebP
after the RIFF size; an uncompressed BMP after its rows; a TIFF, whose parts are found by
offsets and may lie anywhere, ends with the file). Whatever follows is not refused: phones
append a video to a "motion photo" and cameras add vendor trailers after EOI. The submit use
case cuts it off before hashing and storing (:func:`imgsvc.storage.uploads.trim_staged`), so
padding neither fills the disk nor makes one image look like many to dedupe. Pixels are
decoded by the worker, in a child process under a time and memory budget
(:mod:`imgsvc.decoding`).

Uploads are sniffed by content, never by name or Content-Type, against an allow-list.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from imgsvc.errors import ImageTooLarge, UnsupportedImage

ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tiff",
}

#: The most scans a JPEG may have. Real encoders write far fewer: libjpeg(-turbo)'s
#: progressive script has 10 scans for colour, 6 for grey, 18 for CMYK; mozjpeg's scan
#: optimisation keeps a similar handful; a baseline JPEG has one scan per component at
#: most. Every scan makes the decoder pass over the whole coefficient buffer again, so
#: scans, not bytes, set a progressive JPEG's cost: the security review's 1.8 MB file
#: repeats one scan 20,000 times and took 42 s to decode. 100 scans of a 40-megapixel
#: image cost well under a second (see bench/results/2026-11-25-bombs.md).
MAX_JPEG_SCANS = 100

#: Structural elements (chunks, markers, blocks, IFDs) walked per file. A real 10 MB
#: file has a few tens of thousands at most (a GIF's 255-byte sub-blocks); a file
#: built of millions of 1-byte blocks would make even this header walk expensive.
MAX_ELEMENTS = 200_000

#: Seconds of wall-clock the header walk may take when the caller gives no deadline. A real
#: 10 MB file is walked in milliseconds; the web tier passes one deadline per request
#: (``HEADER_CHECK_MS``) so a batch of crafted files shares one budget.
DEFAULT_CHECK_SECONDS = 2.0


#: The allowed formats as a person reads them, for error messages.
ALLOWED_NAMES = ["WebP" if name == "WEBP" else name for name in ALLOWED_FORMATS]

# What people upload by mistake, recognised by its first bytes: (offset, signature, in words).
# (The accepted formats are :func:`sniff`'s.)
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
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
    (8, b"WAVE", "WAV audio"),  # RIFF containers: the form type follows the size
    (8, b"AVI ", "an AVI video"),
)
# Two-byte signatures that ordinary text can start with: tried only on what is not text.
_WEAK_SIGNATURES: tuple[tuple[bytes, str], ...] = (
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
    :func:`sniff` and the format's own structure, never by this guess.
    """
    accepted = sniff(head)
    if accepted and not (accepted == "BMP" and _as_text(head) is not None):  # "BMW 320d, ..." is text
        return f"a {'WebP' if accepted == 'WEBP' else accepted} image"
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
    """For a file that is none of the accepted formats, or one Pillow would not decode: what it
    seems to be, and what is accepted.

    Pillow's own message (exception type, file name) means nothing to the person who sent it.
    """
    with path.open("rb") as file:
        detected = sniff_type(file.read(512))
    allowed = f"{', '.join(ALLOWED_NAMES[:-1])} and {ALLOWED_NAMES[-1]}"
    if detected.removeprefix("a ").removesuffix(" image") in ALLOWED_NAMES:
        message = f"the file looks like {detected} but cannot be decoded"
    else:
        message = f"the file is {detected}; accepted formats are {allowed}"
    return UnsupportedImage(message, detected=detected, allowed=ALLOWED_NAMES)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    #: Frames of an animation or pages of a TIFF (the worker describes the first).
    frames: int = 1
    #: JPEG scans (1 for a baseline image with interleaved components).
    scans: int = 1
    #: Where the image ends in the file (what follows is not the image's); set by
    #: :func:`inspect_image`, None on an ImageInfo built by hand. Not part of equality:
    #: two files with the same image are described alike.
    end: int | None = field(default=None, compare=False)

    @property
    def extension(self) -> str:
        return ALLOWED_FORMATS[self.format]


def inspect_image(path: Path, max_pixels: int, max_frames: int, deadline: float | None = None) -> ImageInfo:
    """Check that ``path`` holds an allowed, well-formed, not-too-large image; decode nothing.

    The answer's ``end`` says where the image ends in the file (its size when nothing follows).

    Raises :class:`UnsupportedImage` (415) when the format is not allowed or the
    structure is broken or truncated, :class:`ImageTooLarge` (413) when the image, any
    of its frames, its frame count or its JPEG scan count exceed the limits, or when the
    walk is still going at ``deadline`` (a :func:`time.monotonic` instant; by default
    :data:`DEFAULT_CHECK_SECONDS` from now).
    """
    if deadline is None:
        deadline = time.monotonic() + DEFAULT_CHECK_SECONDS
    # A bare descriptor, not a buffered file object: nothing is read through it, and setting
    # one up (isatty, seek, stat) costs more than the mapping. The mapping keeps its own.
    fd = os.open(path, os.O_RDONLY)
    try:
        data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except ValueError as exc:  # an empty file cannot be mapped
        raise unsupported("the file is empty") from exc
    finally:
        os.close(fd)
    with data:
        kind = sniff(data[:16])
        if kind is None:
            raise unsupported_image(path)
        walker = _Walker(data, max_pixels, max_frames, deadline)
        try:
            info = WALKERS[kind](walker)
            if kind == "JPEG":
                _jpeg_followers(walker)
        except (struct.error, IndexError) as exc:
            raise unsupported(f"the {kind} data ends early (truncated file)") from exc
        return replace(info, end=walker.end)


def unsupported(reason: str) -> UnsupportedImage:
    """The 415 for a file of an accepted format whose structure does not hold together."""
    return UnsupportedImage(f"the file cannot be read as an image: {reason}", allowed=ALLOWED_NAMES)


def sniff(head: bytes) -> str | None:
    """The format named by the file's magic bytes, if it is one we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


class _Walker:
    """Bounds-checked reads over the mapped file plus the limits every format shares."""

    def __init__(self, data: mmap.mmap, max_pixels: int, max_frames: int, deadline: float) -> None:
        self.data = data
        self.size = len(data)
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.deadline = deadline
        self.elements = 0
        #: Where the image's data ends; a walker that cannot tell leaves the file's end.
        self.end = self.size

    def read(self, fmt: str, offset: int) -> tuple[int, ...]:
        """struct.unpack_from that raises struct.error (= truncated) past the end."""
        return struct.unpack_from(fmt, self.data, offset)

    def need(self, end: int, what: str) -> None:
        if end > self.size:
            raise unsupported(f"{what} ends past the end of the file (truncated file)")

    def step(self, what: str) -> None:
        self.count(1, what)

    def count(self, elements: int, what: str) -> None:
        """Count ``elements`` toward MAX_ELEMENTS (before looping over them) and check the deadline."""
        self.elements += elements
        if self.elements > MAX_ELEMENTS:
            raise unsupported(f"it has more than {MAX_ELEMENTS} {what}; real images have far fewer")
        if time.monotonic() > self.deadline:
            raise ImageTooLarge(
                "checking the image's structure ran out of its time budget; refused as a decompression bomb"
            )

    def check_size(self, kind: str, width: int, height: int, what: str = "image") -> None:
        if width <= 0 or height <= 0:
            raise unsupported(f"the {kind} header gives an empty size {width}x{height}")
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"{what} has {width}x{height} pixels; the limit is {self.max_pixels} pixels",
                width=width,
                height=height,
                max_pixels=self.max_pixels,
            )

    def check_frames(self, frames: int) -> None:
        if frames > self.max_frames:
            raise ImageTooLarge(
                f"image has more than {self.max_frames} frames; the limit is {self.max_frames}",
                max_frames=self.max_frames,
            )


# -- JPEG ---------------------------------------------------------------------------------------
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7 carry no length
#: The end of a scan's entropy-coded data: 0xFF followed by neither a stuffed 0x00 nor a
#: restart marker (a second 0xFF is a fill byte before the marker). Written so that the
#: regex engine can skip to each 0xFF at C speed: ``\xff+`` made it 50x slower.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
#: The first byte after a run of 0xFF fill bytes.
_FILL_END = re.compile(rb"[^\xff]")


def _jpeg(w: _Walker, start: int = 2) -> ImageInfo:
    """Walk the markers from SOI to EOI, counting scans; ``w.end`` is set after EOI."""
    offset, size, scans = start, None, 0
    while True:
        w.step("JPEG markers")
        if w.data[offset] != 0xFF:
            raise unsupported("a JPEG marker is missing where one must be (corrupt file)")
        offset += 1
        if w.data[offset] == 0xFF:
            # Fill bytes before a marker: rare and few in real files. The run's length is a
            # count read from the file, so it is found at C speed and counted, not looped over.
            found = _FILL_END.search(w.data, offset)
            if found is None:
                raise unsupported("the JPEG data ends early (truncated file)")
            w.count(found.start() - offset, "JPEG fill bytes")
            offset = found.start()
        marker = w.data[offset]
        offset += 1
        if marker == 0xD9:  # EOI
            w.end = offset
            break
        if marker in _STANDALONE:
            continue
        (length,) = w.read(">H", offset)
        if length < 2:
            raise unsupported("a JPEG segment has an impossible length (corrupt file)")
        end = offset + length
        w.need(end, "a JPEG segment")
        if marker in _SOF:
            if size is not None:
                raise unsupported("the JPEG has two frame headers (corrupt file)")
            height, width = w.read(">HH", offset + 3)
            w.check_size("JPEG", width, height)
            size = (width, height)
        elif marker == 0xDA:  # SOS: the scan's entropy-coded data follows its header
            if size is None:
                raise unsupported("a JPEG scan comes before the frame header (corrupt file)")
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageTooLarge(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans (real encoders write at most ~20); "
                    "refused as a decompression bomb",
                    max_scans=MAX_JPEG_SCANS,
                )
            found = _SCAN_END.search(w.data, end)
            if found is None:
                raise unsupported("the JPEG data ends inside a scan (truncated file)")
            end = found.start()
        offset = end
    if size is None or scans == 0:
        raise unsupported("the JPEG has no image data (corrupt file)")
    return ImageInfo("JPEG", *size, scans=scans)


def _jpeg_followers(w: _Walker) -> None:
    """JPEG streams after the first one's EOI: an MPO's other images, a camera's appended preview.

    Each is walked like the first (its structure must hold, its size and scans are checked)
    and is part of the image; the image ends after the last one (anything else is cut off).
    """
    while w.data[w.end : w.end + 3] == b"\xff\xd8\xff":
        _jpeg(w, w.end + 2)


# -- PNG ----------------------------------------------------------------------------------------
def _png(w: _Walker) -> ImageInfo:
    """Walk chunks from IHDR to IEND; an APNG's acTL gives its frame count."""
    offset, size, frames = 8, None, 1
    while True:
        w.step("PNG chunks")
        length, kind = w.read(">I4s", offset)
        end = offset + 12 + length  # length, type, data, CRC
        w.need(end, "a PNG chunk")
        if size is None:
            if kind != b"IHDR" or length != 13:
                raise unsupported("the PNG does not start with its header chunk (corrupt file)")
            size = w.read(">II", offset + 8)
            w.check_size("PNG", *size)
        elif kind == b"acTL":
            (frames,) = w.read(">I", offset + 8)
            w.check_frames(frames)
        elif kind == b"fcTL":
            frame = w.read(">II", offset + 12)
            w.check_size("PNG", *frame, what="an animation frame")
        elif kind == b"IEND":
            w.end = end
            break
        offset = end
    return ImageInfo("PNG", *size, frames=max(frames, 1))


# -- GIF ----------------------------------------------------------------------------------------
def _gif(w: _Walker) -> ImageInfo:
    """Walk the blocks: extensions and image descriptors, each followed by sub-blocks.

    A missing trailer is tolerated when the file ends between blocks (many encoders
    forget it, and Pillow reads such files); a file ending inside a block is truncated.
    """
    width, height, flags = w.read("<HHB", 6)
    w.check_size("GIF", width, height)
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    frames = 0
    while offset < w.size:
        w.step("GIF blocks")
        introducer = w.data[offset]
        if introducer == 0x3B:  # trailer
            w.end = offset + 1
            break
        if introducer == 0x21:  # extension: label, then sub-blocks
            offset = _gif_sub_blocks(w, offset + 2)
        elif introducer == 0x2C:  # image descriptor
            left, top, fw, fh, fflags = w.read("<HHHHB", offset + 1)
            frames += 1
            w.check_frames(frames)
            # Pillow grows the canvas to hold a frame that sticks out of it.
            w.check_size("GIF", max(width, left + fw), max(height, top + fh), what="an animation frame")
            offset += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0)
            offset = _gif_sub_blocks(w, offset + 1)  # after the LZW code size byte
        else:
            raise unsupported("the GIF has an unknown block (corrupt file)")
    if frames == 0:
        raise unsupported("the GIF has no image (corrupt file)")
    return ImageInfo("GIF", width, height, frames=frames)


def _gif_sub_blocks(w: _Walker, offset: int) -> int:
    """Skip a chain of length-prefixed sub-blocks; return the offset after its terminator.

    The hottest loop of the walk (a 10 MB GIF has ~40,000 sub-blocks), so it is kept
    bare: reading past the end raises IndexError, which means truncated.
    """
    data, count = w.data, 0
    while length := data[offset]:
        offset += 1 + length
        count += 1
        if count > MAX_ELEMENTS:
            break  # the step below refuses the file
    w.elements += count
    w.step("GIF sub-blocks")
    return offset + 1


# -- WebP ---------------------------------------------------------------------------------------
def _webp(w: _Walker) -> ImageInfo:
    """Walk the RIFF chunks: VP8 / VP8L (a still image) or VP8X (a canvas) with ANMF frames."""
    (riff_size,) = w.read("<I", 4)
    end_of_riff = 8 + riff_size
    w.need(end_of_riff, "the WebP RIFF container")
    w.end = end_of_riff
    offset, size, frames = 12, None, 0
    while offset + 8 <= end_of_riff:
        w.step("WebP chunks")
        kind, length = w.read("<4sI", offset)
        body = offset + 8
        w.need(body + length, "a WebP chunk")
        if kind == b"VP8X":
            canvas_w, canvas_h = _u24(w, body + 4) + 1, _u24(w, body + 7) + 1
            w.check_size("WebP", canvas_w, canvas_h)
            size = size or (canvas_w, canvas_h)
        elif kind == b"ANMF":
            frames += 1
            w.check_frames(frames)
            w.check_size("WebP", _u24(w, body + 6) + 1, _u24(w, body + 9) + 1, what="an animation frame")
        elif kind in (b"VP8 ", b"VP8L") and size is None:
            size = _vp8_size(w, kind, body)
            w.check_size("WebP", *size)
        offset = body + length + (length & 1)  # chunks are padded to an even length
    if size is None:
        raise unsupported("the WebP has no image chunk (corrupt file)")
    return ImageInfo("WEBP", *size, frames=max(frames, 1))


def _u24(w: _Walker, offset: int) -> int:
    low, high = w.read("<HB", offset)
    return low | high << 16


def _vp8_size(w: _Walker, kind: bytes, body: int) -> tuple[int, int]:
    if kind == b"VP8 ":  # lossy: a 3-byte frame tag, the start code, 14-bit sizes
        if w.data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise unsupported("the WebP's VP8 frame has no start code (corrupt file)")
        width, height = w.read("<HH", body + 6)
        return width & 0x3FFF, height & 0x3FFF
    if w.data[body] != 0x2F:  # lossless: a signature byte, then two 14-bit sizes minus one
        raise unsupported("the WebP's VP8L image has no signature (corrupt file)")
    (bits,) = w.read("<I", body + 1)
    return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1


# -- BMP ----------------------------------------------------------------------------------------
_BMP_UNCOMPRESSED = {0, 3, 6}  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS


def _bmp(w: _Walker) -> ImageInfo:
    """The file and DIB headers; an uncompressed bitmap must hold all its rows."""
    (pixel_offset,) = w.read("<I", 10)
    (header_size,) = w.read("<I", 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = w.read("<HHHH", 18)
        compression = 0
    elif header_size >= 40:
        width, height, _, bits, compression = w.read("<iiHHI", 18)
    else:
        raise unsupported("the BMP has an unknown header (corrupt file)")
    height = abs(height)  # negative: stored top-down
    w.check_size("BMP", width, height)
    if bits not in (1, 2, 4, 8, 16, 24, 32):
        raise unsupported(f"the BMP has {bits} bits per pixel (corrupt file)")
    if compression in _BMP_UNCOMPRESSED:
        stride = (width * bits + 31) // 32 * 4
        w.end = pixel_offset + stride * height
        w.need(w.end, "the BMP's pixel rows")
        if header_size >= 124:  # BITMAPV5HEADER: an embedded ICC profile may follow the rows
            profile, profile_size = w.read("<II", 14 + 112)
            if profile_size:
                w.need(14 + profile + profile_size, "the BMP's colour profile")
                w.end = max(w.end, 14 + profile + profile_size)
    return ImageInfo("BMP", width, height)


# -- TIFF ---------------------------------------------------------------------------------------
_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF): sizes and offsets
_TIFF_SIZE_TAGS = (256, 257)  # ImageWidth, ImageLength: only their first value is read
_TIFF_DATA_TAGS = (273, 279, 324, 325)  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts

#: The most strips or tiles a TIFF's first page may list. libtiff writes strips of ~8 KB,
#: so a 40-megapixel RGB page has ~15,000; tiles of 256x256 make a few hundred. Each value
#: also counts toward MAX_ELEMENTS.
MAX_TIFF_STRIPS = 100_000


def _tiff(w: _Walker) -> ImageInfo:
    """Walk the chain of IFDs (pages); the first page's strips or tiles must lie in the file.

    A tag's value array is never read whole unless it is needed: the security review's
    9.7 MB file lists 65,530 StripOffsets arrays of 3.6 M values each on pages after the
    first, which cost an hour of CPU when every array was unpacked. Now each page gives
    only the first value of its width and height; only the first page's strip and tile
    arrays are read, capped at :data:`MAX_TIFF_STRIPS` values and counted toward
    :data:`MAX_ELEMENTS`; a tag repeated within one IFD is refused.
    """
    order = "<" if w.data[:2] == b"II" else ">"
    (magic,) = w.read(order + "H", 2)
    big = magic == 43
    (first,) = w.read(order + ("Q" if big else "I"), 8 if big else 4)
    offset, seen, frames, size = first, set(), 0, None
    while offset:
        w.step("TIFF directories")
        if offset in seen:
            raise unsupported("the TIFF's directories form a loop (corrupt file)")
        seen.add(offset)
        tags, offset = _tiff_ifd(w, order, big, offset, first_page=size is None)
        frames += 1
        w.check_frames(frames)
        page = (_first(tags.get(256)), _first(tags.get(257)))
        w.check_size("TIFF", *page, what="image" if size is None else "a TIFF page")
        if size is None:
            size = page
            for offsets, counts in ((273, 279), (324, 325)):  # strips, tiles
                if offsets in tags and counts in tags:
                    ends = map(sum, zip(tags[offsets], tags[counts], strict=False))
                    w.need(max(ends, default=0), "the TIFF's image data")
    if size is None:
        raise unsupported("the TIFF has no image directory (corrupt file)")
    return ImageInfo("TIFF", *size, frames=frames)


def _first(values: tuple[int, ...] | None) -> int:
    return values[0] if values else 0


def _tiff_ifd(
    w: _Walker, order: str, big: bool, offset: int, first_page: bool
) -> tuple[dict[int, tuple[int, ...]], int]:
    """The numeric tags of one IFD that the check needs, and the next IFD's offset.

    Width and height give one value each; the strip and tile arrays are read on the first
    page only (``first_page``), after their length is capped.
    """
    count_fmt, entry_size, inline = ("Q", 20, 8) if big else ("H", 12, 4)
    pointer = order + ("Q" if big else "I")
    (count,) = w.read(order + count_fmt, offset)
    entries = offset + (8 if big else 2)
    w.need(entries + count * entry_size, "a TIFF directory")  # before the loop, not entry by entry
    tags: dict[int, tuple[int, ...]] = {}
    listed: set[int] = set()
    for index in range(count):
        w.step("TIFF tags")
        entry = entries + index * entry_size
        tag, kind = w.read(order + "HH", entry)
        if tag in listed:
            raise unsupported(f"the TIFF lists tag {tag} twice in one directory (corrupt file)")
        listed.add(tag)
        wanted = tag in _TIFF_SIZE_TAGS or (first_page and tag in _TIFF_DATA_TAGS)
        if not wanted or kind not in _TIFF_TYPES:
            continue
        (n,) = w.read(pointer, entry + 4)
        item = struct.calcsize(_TIFF_TYPES[kind])
        where = entry + (12 if big else 8)
        if n * item > inline:
            (where,) = w.read(pointer, where)
        w.need(where + n * item, "a TIFF tag")
        if tag in _TIFF_SIZE_TAGS:
            n = min(n, 1)  # a size is one value; the rest of a longer array is never looked at
        elif n > MAX_TIFF_STRIPS:
            raise unsupported(
                f"the TIFF's first page lists {n} strips or tiles; the limit is {MAX_TIFF_STRIPS}"
            )
        else:
            w.count(n, "TIFF strip and tile entries")
        tags[tag] = w.read(f"{order}{n}{_TIFF_TYPES[kind]}", where)
    (following,) = w.read(pointer, entries + count * entry_size)
    return tags, following


WALKERS: dict[str, Callable[[_Walker], ImageInfo]] = {
    "JPEG": _jpeg,
    "PNG": _png,
    "GIF": _gif,
    "WEBP": _webp,
    "BMP": _bmp,
    "TIFF": _tiff,
}
