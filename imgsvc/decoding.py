"""Decoding uploads for the model, in a child process with a hard time and memory budget.

Pillow's C decoders hold the CPU (with the GIL released) for as long as a hostile file
makes them: a thread cannot be stopped and a signal handler never runs. So the worker
decodes in a :class:`Decoder`, a small persistent child process (``python -m
imgsvc.decoding``: Pillow only, no torch, started once and reused) whose address space
is capped with ``RLIMIT_AS`` and which the parent SIGKILLs when one image overruns its
deadline; the next image gets a fresh child. The child answers with raw RGB bytes and a
JSON header the parent checks, never a pickle: a child compromised by a malicious file
cannot hand the worker code to run.

:func:`load_for_model` is the decode itself (run inside the child): JPEG draft mode,
Pillow's ``reduce`` through ``thumbnail``, transparency flattened on white, EXIF
orientation applied, metadata dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image

from imgsvc.config import Settings
from imgsvc.images import ALLOWED_FORMATS, unsupported_image

_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HEADER = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
#: Python plus Pillow start in well under a second; a loaded host may take a few.
_START_TIMEOUT = 60.0
#: The answer pipe's size: a decoded image crosses in a few writes, not in 64 KB steps that
#: each wake the parent (1 MiB is what Linux lets any process ask for).
_PIPE_SIZE = 1 << 20
#: The child gives memory back to the system once no request came for this long: not
#: between the images of a batch, where malloc_trim would cost more than the decode itself.
_IDLE_TRIM_AFTER = 0.2
#: A child ended by one of these was killed from outside (the OOM killer, an operator), not by
#: the image: the image is tried once more on a fresh child before it is blamed. A crash of
#: Pillow itself (SIGSEGV, SIGABRT, SIGBUS) is the image's, and is not retried.
_KILLED_FROM_OUTSIDE = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class DecodeError(Exception):
    """This image cannot be decoded within the budget or at all: retrying will not help."""


class DecoderUnavailable(RuntimeError):
    """The decoder process does not start: a fault of this host, not of the image (jobs are retried)."""


def load_for_model(path: Path, max_pixels: int, max_side: int, model_side: int = 0) -> Image.Image:
    """Decode the first frame, bounded to ``max_side``, as plain RGB with no metadata.

    Work is done at the smallest size that serves the model: JPEG decodes at 1/2..1/8
    scale (draft), other formats are shrunk by ``thumbnail`` (an integer ``reduce``,
    then one resampling) before the colour flattening and the EXIF rotation. A model that
    squeezes every image to ``model_side`` pixels square (0: not known) gets a JPEG decoded
    no smaller than that on either side: its own resize then starts from a few times its
    size, not from the photo's (a 12-megapixel JPEG for a 384-pixel model decodes at 1/8).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=list(ALLOWED_FORMATS)) as img:
                if img.width * img.height > max_pixels:
                    raise DecodeError(f"image has {img.width}x{img.height} pixels; the limit is {max_pixels}")
                wanted = min(model_side, max_side) if model_side > 0 else max_side
                if img.format == "JPEG" and min(img.size) >= 2 * wanted:  # draft scales by 2, 4 or 8
                    img.draft("RGB", (wanted, wanted))
                img.seek(0)  # GIF/TIFF/WebP/APNG: the first frame
                img.load()
                orientation = _orientation(img)  # after load: PNG reads its EXIF chunk by loading
                scalable = img if img.mode in {"RGB", "RGBA", "L", "LA"} else _convert_for_scaling(img)
                scalable.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
                rgb = _to_rgb(scalable)
        except FileNotFoundError as exc:
            raise DecodeError("the uploaded file is missing") from exc
        except (DecodeError, MemoryError):
            raise
        except Exception as exc:  # Pillow raises many types for bad input
            # What the file seems to be, not Pillow's exception (its type, and "upload" for a name).
            raise DecodeError(unsupported_image(path).message) from exc
    if orientation in _ORIENTATION:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    rgb.info.clear()
    return rgb


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation; a damaged EXIF block is no reason to refuse the photo."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1


def _convert_for_scaling(img: Image.Image) -> Image.Image:
    """Palette and exotic modes resize badly (nearest neighbour) or not at all."""
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    return img.convert("RGBA" if has_alpha else "RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white: a black background would change the description."""
    if img.mode in {"RGBA", "LA"}:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


class Decoder:
    """The worker's handle on its decoder child: ``decode_many(paths)`` -> images or errors.

    One image at a time goes to the child; each has ``timeout`` seconds of wall clock
    from the moment it is sent. An overrun or a crash fails that image only (the child
    is killed and the next image starts a new one). Thread-safe: calls are serialised.
    """

    def __init__(
        self, max_pixels: int, max_side: int, timeout: float, memory_mb: int, model_side: int = 0
    ) -> None:
        self.max_pixels = max_pixels
        self.max_side = max_side
        #: The side the model squeezes images to (0: unknown): see :func:`load_for_model`.
        self.model_side = model_side
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()
        #: Children started so far (tests and logs: a restart after every overrun).
        self.starts = 0
        #: Paths the running child was sent and has not answered yet (0, 1, or 2 with one ahead).
        self._asked = 0
        #: Every answer's pixels land here before Pillow copies them into the image.
        self._pixels = bytearray()

    @classmethod
    def from_settings(cls, settings: Settings, model_side: int | None = None) -> Decoder:
        s = settings
        return cls(
            s.max_image_pixels, s.max_image_side, s.decode_timeout, s.decode_memory_mb, model_side or 0
        )

    def start(self) -> None:
        """Start the child now, so the first image does not wait for it (raises DecoderUnavailable)."""
        with self._lock:
            self._running_child()

    def decode(self, path: Path) -> Image.Image:
        (result,) = self.decode_many([path])
        if isinstance(result, DecodeError):
            raise result
        return result

    def decode_many(self, paths: Sequence[Path]) -> list[Image.Image | DecodeError]:
        """One result per path, in order; a bad image never spoils the others.

        The next path is asked for before this one's answer is read, so the child decodes it
        while this process copies the pixels: neither side waits for the other.
        """
        with self._lock:
            results: list[Image.Image | DecodeError] = []
            for i, path in enumerate(paths):
                ahead = Path(paths[i + 1]) if i + 1 < len(paths) else None
                result = self._decode_one(self._running_child(), Path(path), ahead)
                if isinstance(result, _KilledFromOutside):  # once more, on a fresh child
                    result = self._decode_one(self._running_child(), Path(path), ahead)
                if isinstance(result, _KilledFromOutside):
                    result = DecodeError(f"the decoder crashed on this image ({result} twice)")
                results.append(result)
            return results

    def close(self) -> None:
        """Stop the child (the worker does this on its way out)."""
        with self._lock:
            self._stop()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request ------------------------------------------------------------------------
    def _decode_one(
        self, child: subprocess.Popen, path: Path, ahead: Path | None
    ) -> Image.Image | DecodeError | _KilledFromOutside:
        """``path``'s image from ``child``, asking for ``ahead`` (the next one) meanwhile.

        The child works in order, so ``path`` was asked for already unless this child is new.
        Its ``timeout`` runs from now: the child starts an image once it answered the one before.
        """
        deadline = time.monotonic() + self.timeout
        try:
            assert child.stdin is not None and child.stdout is not None
            if not self._asked:
                self._ask(child, path)
            if ahead is not None:
                with contextlib.suppress(BrokenPipeError):  # a dead child: this answer will say so
                    self._ask(child, ahead)
            self._asked -= 1
            header = _read_header(child.stdout, deadline)
            if not header.get("ok"):
                return DecodeError(_printable(str(header.get("error", "cannot decode image"))))
            width, height = int(header["width"]), int(header["height"])
            if not (0 < width <= self.max_side and 0 < height <= self.max_side):
                raise _ChildBroke("sent an image of an impossible size")
            if not self._pixels:  # the largest answer there can be, allocated once
                self._pixels = bytearray(self.max_side * self.max_side * 3)
            pixels = _read_exact(child.stdout, width * height * 3, deadline, self._pixels)
            return Image.frombytes("RGB", (width, height), pixels)
        except TimeoutError:
            self._stop()
            return DecodeError(
                f"decoding took longer than DECODE_TIMEOUT={self.timeout:g} s; the decoder was stopped"
            )
        except (_ChildBroke, BrokenPipeError, ValueError, KeyError) as exc:
            killed_by = _killed_by(child)
            self._stop()
            if killed_by in _KILLED_FROM_OUTSIDE:
                return _KilledFromOutside(f"killed by {killed_by.name}")
            return DecodeError(f"the decoder crashed on this image ({exc})")
        except BaseException:
            self._stop()  # interrupted mid-answer (e.g. the job timeout): the stream is out of step
            raise

    def _ask(self, child: subprocess.Popen, path: Path) -> None:
        assert child.stdin is not None
        child.stdin.write(json.dumps(str(path)).encode() + b"\n")
        child.stdin.flush()
        self._asked += 1

    def _running_child(self) -> subprocess.Popen:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._stop()
        command = [sys.executable, "-m", "imgsvc.decoding", str(self.max_pixels), str(self.max_side)]
        command += [str(self.memory_mb), str(self.model_side)]
        # stderr is shared: Pillow's and the child's own complaints land in the worker's log.
        self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.starts += 1
        assert self._child.stdout is not None
        with contextlib.suppress(OSError):  # a smaller pipe only costs more wake-ups
            fcntl.fcntl(self._child.stdout.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        try:  # it says so once it is ready: a child that cannot start must not fail an image
            assert self._child.stdout is not None
            if _read_header(self._child.stdout, time.monotonic() + _START_TIMEOUT) != {"ready": True}:
                raise _ChildBroke("it did not say it was ready")
        except (TimeoutError, _ChildBroke, ValueError) as exc:
            self._stop()
            raise DecoderUnavailable(f"the decoder process did not start: {exc or 'timed out'}") from exc
        return self._child

    def _stop(self) -> None:
        child, self._child = self._child, None
        self._asked = 0  # what the stopped child was asked for is asked of the next one again
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            with contextlib.suppress(OSError):
                stream.close()


def auto_decode_processes(worker_count: int, cores: int | None = None) -> int:
    """``DECODE_PROCESSES=0``: one child per 4 cores a worker has, 1 to 4.

    On 2 cores a second child only competes with the worker's own thread (measured: no gain);
    on 16 cores four children took one worker from ~430 to ~700 photos/s.
    """
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, min(4, cores // max(1, worker_count) // 4))


class DecoderPool:
    """Several decoder children side by side: a batch's images decode in parallel.

    One child decodes one image at a time (~2 ms of CPU for a 512 px JPEG), which caps a worker
    near 400 images/s however fast its model is; a host with cores to spare lends them here
    (``DECODE_PROCESSES``). Each child keeps its own budget, so a hostile image stalls one child
    for at most ``DECODE_TIMEOUT`` while the others go on with the rest of the batch.
    """

    def __init__(self, decoders: Sequence[Decoder]) -> None:
        if not decoders:
            raise ValueError("a decoder pool needs at least one decoder")
        self.decoders = list(decoders)
        self._threads = (
            ThreadPoolExecutor(len(self.decoders), thread_name_prefix="imgsvc-decoder")
            if len(self.decoders) > 1
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings, model_side: int | None = None) -> DecoderPool:
        count = settings.decode_processes or auto_decode_processes(settings.worker_count)
        return cls([Decoder.from_settings(settings, model_side) for _ in range(count)])

    @property
    def starts(self) -> int:
        """Children started so far, all slots together."""
        return sum(decoder.starts for decoder in self.decoders)

    def pids(self) -> list[int]:
        """The running children's process ids (benches read their CPU time)."""
        return [d._child.pid for d in self.decoders if d._child is not None and d._child.poll() is None]

    def start(self) -> None:
        """Start every child now (raises DecoderUnavailable)."""
        if self._threads is None:
            self.decoders[0].start()
            return
        for future in [self._threads.submit(decoder.start) for decoder in self.decoders]:
            future.result()

    def decode(self, path: Path) -> Image.Image:
        return self.decoders[0].decode(path)

    def decode_many(self, paths: Sequence[Path]) -> list[Image.Image | DecodeError]:
        """One result per path, in order; each free child takes the next image (a slow one
        holds up only its own child)."""
        if self._threads is None or len(paths) < 2:
            return self.decoders[0].decode_many(paths)
        results: list[Image.Image | DecodeError | None] = [None] * len(paths)
        indexes = iter(range(len(paths)))
        take = threading.Lock()

        def drain(decoder: Decoder) -> None:
            while True:
                with take:
                    i = next(indexes, None)
                if i is None:
                    return
                results[i] = decoder.decode_many([paths[i]])[0]

        workers = self.decoders[: len(paths)]
        for future in [self._threads.submit(drain, decoder) for decoder in workers]:
            future.result()  # DecoderUnavailable from any child is the whole call's
        return [result for result in results if result is not None]

    def close(self) -> None:
        for decoder in self.decoders:
            decoder.close()
        if self._threads is not None:
            self._threads.shutdown(wait=True)

    def __enter__(self) -> DecoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _printable(text: str) -> str:
    """The child's words reach job rows, logs and pages: plain printable text, no markup, bounded."""
    return re.sub(r"[^\x20-\x7e]|[<>&]", "?", text)[:300]


class _ChildBroke(Exception):
    """The child died or said something that does not parse: its answer cannot be trusted."""


class _KilledFromOutside(Exception):
    """The child was killed by a signal someone else sent while it decoded: not the image's fault."""


def _killed_by(child: subprocess.Popen) -> signal.Signals | None:
    """The signal that ended ``child``; None while it lives (it said something malformed).

    Its answer stream ended, so it is dying: a moment is enough to collect its status.
    """
    try:
        code = child.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return None
    try:
        return signal.Signals(-code) if code < 0 else None
    except ValueError:
        return None


def _read_header(stream: BinaryIO, deadline: float) -> dict[str, object]:
    """One answer's JSON header: a length, then that many bytes of JSON object."""
    (length,) = _HEADER.unpack(_read_exact(stream, _HEADER.size, deadline))
    if length > _MAX_HEADER:
        raise _ChildBroke("sent a malformed answer")
    header = json.loads(_read_exact(stream, length, deadline))
    if not isinstance(header, dict):
        raise _ChildBroke("sent a malformed answer")
    return header


def _read_exact(
    stream: BinaryIO, size: int, deadline: float, into: bytearray | None = None
) -> bytearray | memoryview:
    """``size`` bytes from the child's stdout, or TimeoutError at ``deadline``.

    Read straight into one buffer of the final size: an image is a few MB, copied once.
    ``into``: a buffer of at least ``size`` bytes to reuse, its first ``size`` bytes returned,
    so that each image does not fault in fresh pages.
    """
    fd = stream.fileno()
    buffer = bytearray(size) if into is None else into
    view = memoryview(buffer)[:size]
    received = 0
    while received < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            raise TimeoutError
        count = os.readv(fd, [view[received:]])
        if not count:
            raise _ChildBroke("exited")
        received += count
    return buffer


# -- the child --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Read one JSON path per line on stdin; answer each on stdout; exit at end of input."""
    parser = argparse.ArgumentParser(description="imgsvc's decoder child (started by the worker).")
    parser.add_argument("max_pixels", type=int)
    parser.add_argument("max_side", type=int)
    parser.add_argument("memory_mb", type=int)
    parser.add_argument("model_side", type=int, nargs="?", default=0)
    args = parser.parse_args(argv)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print from any library must not corrupt the answers
    die_with_parent()
    # The whole address space, not RLIMIT_DATA: under RLIMIT_DATA glibc serves big
    # buffers from the heap and keeps a decoded canvas's memory after it is freed.
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _answer(answers, {"ready": True})
    for line in _requests(sys.stdin.fileno(), _malloc_trim()):
        _answer_one(answers, Path(json.loads(line)), args)
    return 0


def _requests(fd: int, trim: Callable[[], object]) -> Iterator[bytes]:
    """One request line at a time, until the parent closes the pipe.

    When no request is waiting for ``_IDLE_TRIM_AFTER`` seconds, the heap is trimmed first:
    an idle worker should not sit on the last image's canvas.
    """
    pending = b""
    while True:
        while b"\n" not in pending:
            if not select.select([fd], [], [], _IDLE_TRIM_AFTER)[0]:
                trim()
            chunk = os.read(fd, 65536)  # blocks until the parent asks again
            if not chunk:
                return
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        yield line


def _answer_one(out: BinaryIO, path: Path, args: argparse.Namespace) -> None:
    try:
        image = load_for_model(path, args.max_pixels, args.max_side, args.model_side)
    except DecodeError as exc:
        _answer(out, {"ok": False, "error": str(exc)})
    except MemoryError:
        error = f"decoding this image needs more than DECODE_MEMORY_MB={args.memory_mb} MB"
        _answer(out, {"ok": False, "error": error})
    else:
        _answer(out, {"ok": True, "width": image.width, "height": image.height}, image.tobytes())


def _answer(out: BinaryIO, header: dict[str, object], payload: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    out.write(_HEADER.pack(len(encoded)) + encoded)
    out.write(payload)
    out.flush()


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), or nothing where there is no glibc."""
    try:
        import ctypes

        malloc_trim = ctypes.CDLL(None).malloc_trim
        return lambda: malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


def die_with_parent() -> None:
    """Linux: be SIGKILLed when the parent dies (a decoder mid-decode, RQ's scheduler)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
