"""Decode bombs: what they cost the web check and the worker, before and after the decode budget.

    python -m bench.bombs [--quick] [--cap SECONDS]

Builds the security review's files: a 6000x6000 progressive JPEG whose one AC scan is
repeated 20,000 times (1.8 MB) and 125,000 times (10.5 MB), a 6300x6300 WebP of 70 KB,
PNG and TIFF canvases just under MAX_IMAGE_PIXELS and one far over it, and (issue 23) the
9.5 MB TIFF tag-array bomb (:func:`tiff_tag_bomb`, see :func:`tiff_table`). For each it
measures, in a fresh process each, CPU seconds, peak RSS and wall-clock of

- the web check: *before* = the pre-fix check (a reduced Pillow decode in the web
  process, kept below as the baseline), *after* = :func:`imgsvc.images.inspect_image`;
- the worker's decode: *before* = the same decode in the worker process with no limit,
  *after* = :class:`imgsvc.decoding.Decoder` (a child under DECODE_TIMEOUT/DECODE_MEMORY_MB).

Then (issue 23 row 4, :func:`trailing_table`) uploads with data after the image's end: one
JPEG with a different ``PADDING-%d`` after it 40 times, a small JPEG followed by 9 MB of zeros
(:func:`trailing_zeros`), a motion photo (a JPEG with an MP4 appended): the bytes stored and the
distinct sha256 (dedupe keys) before (stored as sent) and after (cut at the image's end).

Then it starts gunicorn with the production config twice (the pre-fix check patched in,
then the real app) and sends 8 concurrent uploads of the 1.8 MB bomb and 16 of the WebP,
probing /healthz meanwhile: its worst latency, the uploads' wall-clock and the web
processes' peak RSS. Anything "before" is stopped after ``--cap`` seconds and reported
as ">cap". ``--quick`` (CI) uses smaller bombs and skips the server phase.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path

from PIL import Image

from imgsvc.config import PROJECT_ROOT
from imgsvc.images import ImageInfo


# -- the bombs (pure builders; the tests use them too) --------------------------------------------
def progressive_scan_bomb(side: int = 6000, repeats: int = 20_000) -> bytes:
    """A black progressive JPEG whose first AC scan (with its Huffman table) is repeated.

    Every scan makes libjpeg pass over all ``(side/8)^2`` blocks again, while each copy
    costs ~82 bytes thanks to end-of-band runs: 20,000 copies are 1.8 MB.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "JPEG", progressive=True, quality=75)
    data = buffer.getvalue()
    segments = list(_jpeg_segments(data))
    # The first AC scan: SOS with Ss > 0, plus the DHT right before it.
    index = next(
        i for i, (start, marker, _) in enumerate(segments) if marker == 0xDA and _scan_ss(data, start) > 0
    )
    unit_start, unit_end = segments[index - 1][0], segments[index][2]
    assert segments[index - 1][1] == 0xC4, "expected a DHT before the AC scan"
    return data[:unit_end] + data[unit_start:unit_end] * (repeats - 1) + data[unit_end:]


def _jpeg_segments(data: bytes):
    """(start, marker, end) for each segment; a scan's end is the end of its entropy data."""
    offset = 2
    while offset < len(data):
        start = offset
        marker = data[offset + 1]
        if marker == 0xD9:
            yield start, marker, offset + 2
            return
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        end = offset + 2 + length
        if marker == 0xDA:
            end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, end).start()
        yield start, marker, end
        offset = end


def _scan_ss(data: bytes, start: int) -> int:
    components = data[start + 4]
    return data[start + 5 + 2 * components]


def webp_canvas_bomb(side: int = 6300) -> bytes:
    """The review's 70 KB WebP: a 6300x6300 black canvas (39.7 MP, just under the limit)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "WEBP", quality=1)
    return buffer.getvalue()


def canvas(fmt: str, side: int = 6300) -> bytes:
    """A black canvas just under the default MAX_IMAGE_PIXELS, compressed to a few hundred KB."""
    buffer = io.BytesIO()
    options = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}
    Image.new("RGB", (side, side)).save(buffer, fmt, **options)
    return buffer.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (its pixel data is a token)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def tiff_tag_bomb(entries: int = 65_530, values: int = 3_600_000, pages: int = 3) -> bytes:
    """The review's TIFF tag-array bomb: a valid 1x1 first page, then ``pages`` IFDs of ``entries``
    StripOffsets entries each (type SHORT, ``values`` values), all pointing at one region.

    The defaults give the review's 9.7 MB file. The pre-fix check unpacked every entry's
    whole array: 15-38 ms of CPU per entry, about an hour for the whole file.
    """
    region = 8 + 2 + 9 * 12 + 4 + 1  # header, the first page's IFD, its one pixel
    first = [  # (tag, type, count, value): an uncompressed 8-bit grey 1x1 page
        (256, 3, 1, 1),
        (257, 3, 1, 1),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, region - 1),
        (277, 3, 1, 1),
        (278, 3, 1, 1),
        (279, 4, 1, 1),
    ]
    ifd = region + values * 2  # the pages after the first follow the shared region
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    out += struct.pack("<H", len(first)) + b"".join(struct.pack("<HHII", *e) for e in first)
    out += struct.pack("<I", ifd if pages else 0) + b"\x00"
    out += bytes(values * 2)
    entry = struct.pack("<HHII", 273, 3, values, region)
    for page in range(pages):
        following = ifd + (page + 1) * (2 + entries * 12 + 4) if page + 1 < pages else 0
        out += struct.pack("<H", entries) + entry * entries + struct.pack("<I", following)
    return bytes(out)


def trailing_zeros(zeros: int = 9 * 1024 * 1024) -> bytes:
    """The review's disk filler: a small JPEG and megabytes of zeros after its end."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue() + bytes(zeros)


def trailing_uploads(quick: bool) -> dict[str, list[bytes]]:
    """Issue 23 row 4's uploads and a phone's motion photo: images with data after their end."""
    image = trailing_zeros(0)
    megabytes = 1 if quick else 9
    photo = io.BytesIO()
    Image.effect_noise((640, 480), 60).convert("RGB").save(photo, "JPEG")
    video = struct.pack(">I4s4sI8s", 24, b"ftyp", b"mp42", 0, b"isommp42")
    video += struct.pack(">I4s", 8 + 2 * 1024 * 1024, b"mdat") + bytes(2 * 1024 * 1024)
    return {
        "one jpeg + PADDING-n x 100, 40 times": [image + f"PADDING-{n}".encode() * 100 for n in range(40)],
        f"small jpeg + {megabytes} MB of zeros": [trailing_zeros(megabytes * 1024 * 1024)],
        "motion photo (jpeg + 2 MB mp4)": [photo.getvalue() + video],
    }


def bombs(quick: bool) -> dict[str, bytes]:
    if quick:
        return {
            "jpeg, 1,000 scans, 3000x3000": progressive_scan_bomb(3000, 1000),
            "webp 3000x3000": webp_canvas_bomb(3000),
            "png 100000x100000 (declared)": declared_png(100_000, 100_000),
        }
    return {
        "jpeg, 20,000 scans (1.8 MB)": progressive_scan_bomb(6000, 20_000),
        "jpeg, 125,000 scans (10.5 MB)": progressive_scan_bomb(6000, 125_000),
        "webp 6300x6300 (70 KB)": webp_canvas_bomb(6300),
        "png 6300x6300": canvas("PNG"),
        "tiff 6300x6300 (deflate)": canvas("TIFF"),
        "png 100000x100000 (declared)": declared_png(100_000, 100_000),
    }


# -- the pre-fix web check, kept as the baseline ------------------------------------------------------
def legacy_inspect(path: Path, max_pixels: int) -> ImageInfo:
    """The web check before this change (commit 88b335e): open, pixel count, reduced decode."""
    from imgsvc.errors import ImageTooLarge, UnsupportedImage

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]) as img:
                info = ImageInfo(img.format or "", img.width, img.height)
                if info.width * info.height > max_pixels:
                    raise ImageTooLarge(f"image has {info.width}x{info.height} pixels")
                if info.format == "JPEG":
                    img.draft("RGB", (max(1, info.width // 8), max(1, info.height // 8)))
                img.load()
        except ImageTooLarge:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageTooLarge("image refused as a decompression bomb") from exc
        except Exception as exc:
            raise UnsupportedImage(f"not an image we can read: {type(exc).__name__}") from exc
    return info


def legacy_tiff_walk(path: Path) -> None:
    """The TIFF header walk before the tag-array fix (commit 18cb8fc): every listed size or
    strip tag of every page had its whole value array unpacked; only the bounds were checked."""
    import mmap

    from imgsvc.images import _first, _Walker, unsupported

    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        w = _Walker(data, 40_000_000, 1000, float("inf"))
        order = "<" if data[:2] == b"II" else ">"
        (offset,) = w.read(order + "I", 4)
        while offset:
            w.step("TIFF directories")
            (count,) = w.read(order + "H", offset)
            tags: dict[int, tuple[int, ...]] = {}
            for index in range(count):
                w.step("TIFF tags")
                entry = offset + 2 + index * 12
                tag, kind = w.read(order + "HH", entry)
                if tag not in (256, 257, 273, 279, 324, 325) or kind not in (3, 4):
                    continue
                (n,) = w.read(order + "I", entry + 4)
                item, where = (2 if kind == 3 else 4), entry + 8
                if n * item > 4:
                    (where,) = w.read(order + "I", where)
                w.need(where + n * item, "a TIFF tag")
                tags[tag] = w.read(f"{order}{n}{'H' if kind == 3 else 'I'}", where)
            (offset,) = w.read(order + "I", offset + 2 + count * 12)
            w.check_size("TIFF", _first(tags.get(256)), _first(tags.get(257)))
    raise unsupported("(the legacy walk got to the end)")


def legacy_app():
    """The real app with the pre-fix check patched in: ``gunicorn 'bench.bombs:legacy_app()'``."""
    from imgsvc import create_app, submissions

    submissions.inspect_image = lambda path, max_pixels, max_frames, *_: legacy_inspect(path, max_pixels)
    return create_app()


# -- one measurement in a fresh process ---------------------------------------------------------------
PROBE = """
import json, resource, sys, time
from pathlib import Path
mode, path = sys.argv[1], Path(sys.argv[2])
from imgsvc.config import Settings
s = Settings()
started = time.perf_counter()
outcome = "ok"
try:
    if mode == "tiff-walk-before":
        from bench.bombs import legacy_tiff_walk
        legacy_tiff_walk(path)
    elif mode == "web-before":
        from bench.bombs import legacy_inspect
        legacy_inspect(path, s.max_image_pixels)
    elif mode == "web-after":
        from imgsvc.images import inspect_image
        inspect_image(path, s.max_image_pixels, s.max_image_frames)
    elif mode == "worker-before":
        from imgsvc.decoding import load_for_model
        load_for_model(path, s.max_image_pixels, s.max_image_side)
    else:
        from imgsvc.decoding import Decoder
        with Decoder.from_settings(s) as decoder:
            decoder.decode(path)
except Exception as exc:
    reasons = {"DECODE_TIMEOUT": "failed (time)", "DECODE_MEMORY_MB": "failed (memory)"}
    outcome = getattr(exc, "status", None) or next(
        (short for key, short in reasons.items() if key in str(exc)), "failed"
    )
wall = time.perf_counter() - started
usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
# VmHWM, not ru_maxrss, for this process: ru_maxrss survives exec (the bench's own RSS).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({
    "outcome": str(outcome), "wall": wall,
    "cpu": sum(u.ru_utime + u.ru_stime for u in usage),
    "rss_mb": max(int(hwm.split()[1]), usage[1].ru_maxrss) / 1024,
}))
"""


def measure(mode: str, path: Path, cap: float) -> dict[str, object]:
    """One probe run; a run over ``cap`` seconds is killed and reported as such."""
    command = [sys.executable, "-c", PROBE, mode, str(path)]
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=cap, check=True
        )
    except subprocess.TimeoutExpired:
        return {"outcome": "stopped", "wall": None, "cpu": None, "rss_mb": None}
    return json.loads(done.stdout.strip().splitlines()[-1])


def figure(value: object, cap: float, unit: str) -> str:
    if value is None:  # stopped at the cap: time is known to exceed it, memory is not known
        return f">{cap:.0f}{unit}" if unit == " s" else "?"
    return f"{value:.2f}{unit}" if unit == " s" else f"{value:.0f}{unit}"


def file_table(files: dict[str, Path], cap: float) -> None:
    from bench.harness import table

    rows = []
    for name, path in files.items():
        for side in ("web", "worker"):
            before, after = measure(f"{side}-before", path, cap), measure(f"{side}-after", path, cap)
            rows.append(
                [
                    f"{name} · {side}",
                    f"{before['outcome']} → {after['outcome']}",
                    f"{figure(before['cpu'], cap, ' s')} → {figure(after['cpu'], cap, ' s')}",
                    f"{figure(before['rss_mb'], cap, ' MB')} → {figure(after['rss_mb'], cap, ' MB')}",
                    f"{figure(before['wall'], cap, ' s')} → {figure(after['wall'], cap, ' s')}",
                ]
            )
            print(f"  measured {name} · {side}", flush=True)
    table(["file · where", "outcome before → after", "CPU", "peak RSS", "wall-clock"], rows)


def tiff_table(tmp: Path, quick: bool, cap: float) -> None:
    """The TIFF tag-array bomb: the header walk before (every array unpacked) and after the fix.

    "Before" on the whole 9.5 MB file would take about an hour, so it is measured on a file
    of ``sample`` entries and extrapolated linearly (the walk's cost is per entry: each
    unpacks the same 3.6 M-value array); the extrapolated figures are marked "~".
    """
    from bench.harness import table

    sample = 50 if quick else 200
    full_entries, pages = 65_530, 3
    small, full = tmp / "tiff-sample", tmp / "tiff-full"
    small.write_bytes(tiff_tag_bomb(entries=sample, pages=1))
    full.write_bytes(tiff_tag_bomb(entries=full_entries, pages=pages))
    rows = []
    before = measure("tiff-walk-before", small, cap)
    after_small, after_full = measure("web-after", small, cap), measure("web-after", full, cap)
    per_entry = before["cpu"] / sample if before["cpu"] is not None else None
    rows.append(
        [
            f"{sample} entries, 1 page ({small.stat().st_size / 1e6:.1f} MB), measured",
            f"{before['outcome']} → {after_small['outcome']}",
            f"{figure(before['cpu'], cap, ' s')} → {figure(after_small['cpu'], cap, ' s')}",
            f"{figure(before['wall'], cap, ' s')} → {figure(after_small['wall'], cap, ' s')}",
        ]
    )
    estimate = f"~{per_entry * full_entries * pages:,.0f} s" if per_entry is not None else "?"
    rows.append(
        [
            f"{pages} x {full_entries:,} entries ({full.stat().st_size / 1e6:.1f} MB), before extrapolated",
            f"(415 after the walk) → {after_full['outcome']}",
            f"{estimate} → {figure(after_full['cpu'], cap, ' s')}",
            f"{estimate} → {figure(after_full['wall'], cap, ' s')}",
        ]
    )
    if per_entry is not None:
        print(f"  before: {per_entry * 1000:.1f} ms of CPU per StripOffsets entry", flush=True)
    table(["TIFF tag-array bomb · web check", "outcome before → after", "CPU", "wall-clock"], rows)


def trailing_table(tmp: Path, quick: bool) -> None:
    """What the store keeps of uploads with data after the image: before, everything as sent
    (each padded copy its own sha256, so dedupe never matched); after, the image alone (the
    submit path's :func:`~imgsvc.images.inspect_image` then :func:`~imgsvc.storage.uploads.trim_staged`).
    """
    import hashlib

    from bench.harness import table
    from imgsvc.config import Settings
    from imgsvc.images import inspect_image
    from imgsvc.storage.uploads import LocalUploadStore, human_size, trim_staged

    s = Settings()
    store = LocalUploadStore(tmp / "trailing", s.max_file_size)
    rows = []
    for name, uploads in trailing_uploads(quick).items():
        kept: dict[str, int] = {}
        started = time.perf_counter()
        for data in uploads:
            staged = store.stage(io.BytesIO(data))
            info = inspect_image(staged.path, s.max_image_pixels, s.max_image_frames)
            staged = trim_staged(staged, info.end)
            kept[staged.sha256] = staged.size
            store.discard(staged)
        per_upload = (time.perf_counter() - started) / len(uploads)
        sent = sum(len(data) for data in uploads)
        rows.append(
            [
                name,
                f"{len({hashlib.sha256(data).digest() for data in uploads})} → {len(kept)}",
                f"{human_size(sent)} → {human_size(sum(kept.values()))}",
                f"{per_upload * 1000:.1f} ms",
            ]
        )
    table(
        ["trailing data · upload", "distinct sha256", "bytes stored (once per image)", "stage+check+cut"],
        rows,
    )


# -- the server phase -------------------------------------------------------------------------------
def server_phase(files: dict[str, Path], cap: float) -> None:
    from bench.harness import REDIS_URL, scratch_redis, table

    jpeg = next(path for name, path in files.items() if name.startswith("jpeg"))
    webp = next(path for name, path in files.items() if name.startswith("webp"))
    rows = []
    with scratch_redis(), tempfile.TemporaryDirectory(prefix="imgsvc-bombs-") as tmp:
        for label, app in (("before", "bench.bombs:legacy_app()"), ("after", "wsgi:app")):
            for path, count in ((jpeg, 8), (webp, 16)):
                with gunicorn(app, Path(tmp), REDIS_URL) as (port, server):
                    result = storm(port, server, path, count, cap)
                rows.append(
                    [
                        f"{count} x {path.name} · {label}",
                        " ".join(f"{code}x{n}" for code, n in sorted(result["codes"].items())),
                        figure(result["uploads_s"], cap, " s"),
                        figure(result["healthz_max_s"], cap, " s"),
                        f"{result['rss_mb']:.0f} MB",
                    ]
                )
                print(f"  measured {rows[-1][0]}", flush=True)
    table(["uploads · code", "answers", "all uploads answered", "/healthz worst", "web RSS (peak)"], rows)


@contextlib.contextmanager
def gunicorn(app: str, tmp: Path, redis_url: str):
    import socket

    from bench.harness import stop_group

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = os.environ | {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp / 'bombs.sqlite'}",
        "UPLOAD_DIR": str(tmp / "uploads"),
        "RQ_QUEUE": "bench-bombs",
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]
    command += ["--no-control-socket", "--access-logfile", "/dev/null", app]
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while get(port, "/healthz", 1) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.1)
        yield port, server
    finally:
        stop_group(server)


def get(port: int, path: str, timeout: float) -> int | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None


def upload(port: int, data: bytes, timeout: float) -> int | str:
    boundary = "bombboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request(
            "POST", "/api/v1/submit", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        return connection.getresponse().status
    except OSError as exc:  # timed out, or the connection was dropped
        return type(exc).__name__


def storm(port: int, server: subprocess.Popen, path: Path, count: int, cap: float) -> dict[str, object]:
    """``count`` concurrent uploads; /healthz probed and the web processes' RSS sampled meanwhile."""
    data = path.read_bytes()
    codes: list[int | str] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda: codes.append(upload(port, data, cap))) for _ in range(count)]
    for thread in threads:
        thread.start()
    worst, rss = 0.0, 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal rss
        while not stop.wait(0.1):
            rss = max(rss, web_rss_mb(server))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    while len(codes) < count and time.perf_counter() - started < cap:
        probe = time.perf_counter()
        status = get(port, "/healthz", max(0.1, cap - (probe - started)))
        worst = max(worst, time.perf_counter() - probe if status == 200 else cap)
        time.sleep(0.5)
    stop.set()
    sampler.join()
    uploads_s = time.perf_counter() - started if len(codes) == count else None
    for thread in threads:
        thread.join(timeout=1)
    tally: dict[str, int] = {}
    for code in codes + ["unanswered"] * (count - len(codes)):
        tally[str(code)] = tally.get(str(code), 0) + 1
    healthz = None if worst >= cap else worst
    return {"codes": tally, "uploads_s": uploads_s, "healthz_max_s": healthz, "rss_mb": rss}


def web_rss_mb(server: subprocess.Popen) -> float:
    """The RSS of gunicorn's worker processes now, summed (they are restarted if killed)."""
    total = 0
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        for pid in children:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
    return total / 1024


def main(argv: list[str] | None = None) -> None:
    from bench.harness import header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small bombs, no server phase (CI)")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds after which a run is stopped")
    args = parser.parse_args(argv)
    header("decode bombs: before (web decodes, worker unbounded) → after (headers only, budgeted child)")
    with tempfile.TemporaryDirectory(prefix="imgsvc-bombs-") as tmp:
        files: dict[str, Path] = {}
        for index, (name, data) in enumerate(bombs(args.quick).items()):
            files[name] = Path(tmp) / f"bomb{index}"
            files[name].write_bytes(data)
            print(f"built {name}: {len(data):,} bytes", flush=True)
        file_table(files, args.cap)
        tiff_table(Path(tmp), args.quick, args.cap)
        trailing_table(Path(tmp), args.quick)
        if not args.quick:
            server_phase(files, args.cap)


if __name__ == "__main__":
    main()
