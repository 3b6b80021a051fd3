"""Generated text made fit to show: what every captioner does to a model's answer before it is stored."""

from __future__ import annotations


def clean_text(text: str) -> str:
    """Printable text on one line: control characters and bytes that are no character (a byte-level
    token cut a UTF-8 sequence) become spaces, runs of spaces collapse."""
    return " ".join("".join(ch if ch.isprintable() and ch != "\ufffd" else " " for ch in text).split())
