"""A worker's images: uploads read from the store and decoded on a thread of their own.

:class:`ImageLoader` runs the store read (a file, or a download from object storage) and the
decode (in the decoder child, :mod:`imgsvc.decoding`) on one background thread, so a batch's
images can be decoded while the main thread runs the model on the previous batch and writes
its results. The worker tells it which uploads come next (``then``): they are decoded ahead,
and the next :meth:`ImageLoader.load` of those names takes them from there.

Decoding ahead claims nothing: the jobs stay on the queue, untouched, until the worker takes
them as usual. A guess that turns out wrong (another worker took the job, or it was cancelled)
only costs the decode; images are keyed by upload name, and a stored upload never changes.
Nothing here knows about Flask, SQL or RQ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from PIL import Image

from imgsvc.decoding import DecodeError, Decoder, DecoderPool
from imgsvc.errors import StorageUnavailable
from imgsvc.storage.uploads import UploadStore


class PermanentJobError(Exception):
    """An input no retry can fix (the image does not decode, the upload is gone)."""


#: What loading one upload gives: the image, or why not (PermanentJobError: fail for good;
#: StorageUnavailable or DecoderUnavailable: the host's fault, retry).
Loaded = Image.Image | Exception


class ImageLoader:
    """``load(names, then=next_names)`` -> images in order; the next ones are decoded meanwhile."""

    def __init__(self, uploads: UploadStore, decoder: Decoder | DecoderPool, batch_size: int = 1) -> None:
        self.uploads = uploads
        self.decoder = decoder
        # Pillow gives a freed image's memory back to the system by default, and the next image
        # (the decoder's answer is copied into one) faults in fresh pages, a fault per 4 KB: that
        # cost more than the copy. Keep the memory blocks of two batches' images for reuse
        # instead, memory the worker needs anyway while a batch and the next one are in hand.
        wanted = 2 * batch_size + 2
        if Image.core.get_blocks_max() < wanted:
            Image.core.set_blocks_max(wanted)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="imgsvc-decode")
        #: Upload name -> the decode of the request it was part of (decoded ahead, not asked for yet).
        self._ahead: dict[str, Future[dict[str, Loaded]]] = {}

    def load(self, names: Sequence[str], *, then: Iterable[str] = ()) -> list[Loaded]:
        """The images of ``names``, in order; then starts decoding ``then`` ahead.

        Names decoded ahead are taken from there, unless what came back was the host's fault
        (a store or decoder that did not answer then may answer now); the rest are read and
        decoded now. Whatever was decoded ahead and not asked for is forgotten.
        """
        ahead, self._ahead = self._ahead, {}
        futures: dict[str, Future[dict[str, Loaded]]] = {}
        for name in names:
            future = ahead.get(name)
            if future is not None and not _transient(future, name):
                futures[name] = future
        missing = [name for name in names if name not in futures]
        if missing:
            now = self._thread.submit(self._read_and_decode, missing)
            futures |= dict.fromkeys(missing, now)
        upcoming = [name for name in dict.fromkeys(then) if name not in futures]
        if upcoming:
            later = self._thread.submit(self._read_and_decode, upcoming)
            self._ahead = dict.fromkeys(upcoming, later)
        return [_result(futures[name], name) for name in names]

    def prefetch(self, names: Iterable[str]) -> None:
        """Also decode ``names`` ahead (those not ahead already): uploads that joined the queue
        after the last :meth:`load` said what comes next."""
        upcoming = [name for name in dict.fromkeys(names) if name not in self._ahead]
        if upcoming:
            later = self._thread.submit(self._read_and_decode, upcoming)
            self._ahead |= dict.fromkeys(upcoming, later)

    def close(self) -> None:
        self._ahead = {}
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _read_and_decode(self, names: list[str]) -> dict[str, Loaded]:
        """On the loader's thread: each upload as a local file, all decoded in one call to the child."""
        loaded: dict[str, Loaded] = {}
        with ExitStack() as copies:
            paths: dict[str, Path] = {}
            for name in names:
                try:
                    paths[name] = copies.enter_context(self.uploads.local_copy(name))
                except FileNotFoundError:
                    loaded[name] = PermanentJobError("the uploaded file is missing")
                except StorageUnavailable as exc:
                    loaded[name] = exc
            decoded = self.decoder.decode_many(list(paths.values()))
        for name, image in zip(paths, decoded, strict=True):
            loaded[name] = PermanentJobError(str(image)) if isinstance(image, DecodeError) else image
        return loaded


def _result(future: Future[dict[str, Loaded]], name: str) -> Loaded:
    """One name's image or error; a request that failed as a whole (the decoder would not
    start) is that error for each of its names."""
    try:
        return future.result()[name]
    except Exception as exc:
        return exc


def _transient(future: Future[dict[str, Loaded]], name: str) -> bool:
    """Whether a decode done ahead ended in the host's fault (worth another try now)."""
    if not future.done():
        return False
    loaded = _result(future, name)
    return isinstance(loaded, Exception) and not isinstance(loaded, PermanentJobError)
