"""The multipart decoder without per-request regular expressions finds what werkzeug's finds."""

from __future__ import annotations

import random

import pytest
import werkzeug.formparser
from werkzeug.sansio.multipart import Data, Epilogue, MultipartDecoder, NeedData

from imgsvc.web.multipart import BoundaryDecoder, BoundaryFinder, install

PIECES = [b"\r\n", b"\n", b"\r", b"--", b"-", b" ", b"\t", b"\x0b", b"\x0c", b"x", b"b0", b"b0b"]


def werkzeug_expressions(boundary: bytes):
    reference = MultipartDecoder(boundary)
    return reference.preamble_re, reference.boundary_re


@pytest.mark.parametrize("boundary", [b"b0", b"b0b", b"-b0", b"x"])
def test_the_finder_matches_where_werkzeugs_expressions_match(boundary):
    preamble_re, boundary_re = werkzeug_expressions(boundary)
    ours = {
        "preamble": BoundaryFinder(boundary, leading_break_optional=True),
        "boundary": BoundaryFinder(boundary, leading_break_optional=False),
    }
    generator = random.Random(27)
    for _ in range(4000):
        data = b"".join(generator.choice(PIECES) for _ in range(generator.randrange(0, 12)))
        data = bytearray(data) if generator.random() < 0.5 else data
        pos = generator.randrange(0, len(data) + 1)
        for name, expression in (("preamble", preamble_re), ("boundary", boundary_re)):
            expected = expression.search(data, pos)
            found = ours[name].search(data, pos)
            if expected is None:
                assert found is None, (name, bytes(data), pos)
            else:
                assert found is not None, (name, bytes(data), pos)
                got = (found.start(), found.end(), found.group(1))
                assert got == (expected.start(), expected.end(), expected.group(1)), (name, bytes(data), pos)


def events(decoder: MultipartDecoder, body: bytes, chunk: int) -> list:
    seen = []
    for i in range(0, len(body) + 1, chunk):
        decoder.receive_data(body[i : i + chunk] if i < len(body) else None)
        while not isinstance(event := decoder.next_event(), NeedData | Epilogue):
            seen.append(event)
        if isinstance(event, Epilogue):
            seen.append(event)
            break
    return [e if not isinstance(e, Data) else ("data", e.data, e.more_data) for e in seen]


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
def test_a_whole_form_decodes_to_the_same_events(chunk):
    boundary = b"3f2a9c"
    body = (
        b"preamble\r\n--3f2a9c\r\n"
        b'Content-Disposition: form-data; name="options"\r\n\r\n{"max_length": 9}\r\n'
        b"--3f2a9c  \r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        + bytes(range(256)) * 3
        + b"\r\n--3f2a9 not yet\r\n--3f2a9c--\r\nepilogue"
    )
    assert events(BoundaryDecoder(boundary), body, chunk) == events(MultipartDecoder(boundary), body, chunk)


def test_an_upload_is_decoded_by_this_decoder_once_installed(app, monkeypatch):
    """The seam: werkzeug's MultiPartParser.parse builds its decoder by this module-level name."""
    install()
    assert werkzeug.formparser.MultipartDecoder is BoundaryDecoder
    made = []

    class Recording(BoundaryDecoder):
        def __init__(self, *args, **kwargs):
            made.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(werkzeug.formparser, "MultipartDecoder", Recording)
    with app.test_request_context(
        "/", method="POST", data={"note": "hi"}, content_type="multipart/form-data"
    ) as context:
        assert context.request.form["note"] == "hi"
    assert len(made) == 1
