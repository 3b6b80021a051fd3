"""The worker's image loader: reads and decodes on its own thread, ahead of time when told what comes next."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from imgsvc.decoding import Decoder, DecoderUnavailable
from imgsvc.errors import StorageUnavailable
from imgsvc.queue.prefetch import ImageLoader, PermanentJobError
from imgsvc.storage.uploads import LocalUploadStore


class CountingDecoder(Decoder):
    """The real decoder child, remembering every request and the thread that made it."""

    def __init__(self) -> None:
        super().__init__(10**7, 1024, timeout=30, memory_mb=512)
        self.requests: list[list[str]] = []
        self.threads: set[str] = set()
        #: Requests (by number, from 0) that fail as a decoder that cannot start does.
        self.failing: set[int] = set()

    def decode_many(self, paths):
        self.requests.append([Path(p).name for p in paths])
        self.threads.add(threading.current_thread().name)
        if len(self.requests) - 1 in self.failing:
            raise DecoderUnavailable("the decoder process did not start")
        return super().decode_many(paths)


@pytest.fixture()
def store(tmp_path: Path) -> LocalUploadStore:
    return LocalUploadStore(tmp_path / "uploads", max_bytes=10**6)


@pytest.fixture()
def loader(store):
    decoder = CountingDecoder()
    loader = ImageLoader(store, decoder)
    yield loader
    loader.close()
    decoder.close()


def upload(store: LocalUploadStore, width: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 10), (width, 0, 0)).save(buffer, "PNG")
    return store.commit(store.stage(io.BytesIO(buffer.getvalue())), ".png")


def test_images_come_in_order_and_errors_stay_with_their_upload(loader, store):
    good, broken, gone = upload(store, 11), upload(store, 12), upload(store, 13)
    store.path_of(broken).write_bytes(b"not an image")
    store.delete(gone)

    first, bad, missing = loader.load([good, broken, gone])

    assert first.size == (11, 10)
    assert isinstance(bad, PermanentJobError) and "plain text" in str(bad)
    assert isinstance(missing, PermanentJobError) and "missing" in str(missing)
    assert loader.decoder.threads == {"imgsvc-decode_0"}  # never on the caller's thread


def test_the_next_batch_is_decoded_ahead_and_taken_from_there(loader, store):
    now, later, unused = upload(store, 21), upload(store, 22), upload(store, 23)

    loader.load([now], then=[later, unused])
    assert loader.load([later])[0].size == (22, 10)

    # one request for each call, the one ahead included; nothing read twice
    assert loader.decoder.requests == [[now], [later, unused]]
    loader.load([unused])  # not asked for by the load before: forgotten, decoded again
    assert loader.decoder.requests[-1] == [unused]


def test_a_fault_of_the_host_while_decoding_ahead_is_tried_again(loader, store):
    """The decoder (or the store) did not answer ahead of time: that says nothing of the image."""
    first, now, later = upload(store, 30), upload(store, 31), upload(store, 32)
    loader.decoder.failing = {0, 2}
    (failed,) = loader.load([first])
    assert isinstance(failed, DecoderUnavailable)  # each image of a request that failed as a whole
    loader.load([now], then=[later])  # the decode ahead (request 2) fails
    assert loader.load([later])[0].size == (32, 10)
    assert loader.decoder.requests == [[first], [now], [later], [later]]


def test_a_store_that_does_not_answer_is_a_fault_of_the_host(store, loader, monkeypatch):
    name = upload(store, 41)

    def unreachable(self, name):
        raise StorageUnavailable()

    monkeypatch.setattr(LocalUploadStore, "local_copy", unreachable)
    (result,) = loader.load([name])
    assert isinstance(result, StorageUnavailable)


def test_uploads_queued_after_a_load_are_decoded_ahead_too(loader, store):
    now, known, newcomer, next_one = (upload(store, w) for w in (31, 32, 33, 34))

    loader.load([now], then=[known])
    loader.prefetch([known, newcomer])  # what the queue holds once the model has run
    images = loader.load([known, newcomer], then=[next_one])

    assert [image.size for image in images] == [(32, 10), (33, 10)]
    # the one already ahead is not decoded twice; the newcomer went in a request of its own
    assert loader.decoder.requests[:3] == [[now], [known], [newcomer]]
