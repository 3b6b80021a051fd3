"""Sentence composition: articles, plurals, hedging by score, OCR text; no model needed."""

from __future__ import annotations

import pytest

from imgsvc.vision.base import Tag, TextLine
from imgsvc.vision.classifier.sentences import (
    compose,
    display_name,
    merge_tags,
    quote,
    subject_phrase,
    with_article,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("espresso", "an espresso"),
        ("tabby cat", "a tabby cat"),
        ("Egyptian cat", "an Egyptian cat"),
        ("unicycle", "a unicycle"),
        ("European fire salamander", "a European fire salamander"),
        ("hourglass", "an hourglass"),
        ("iPod", "an iPod"),
        ("CD player", "a CD player"),
        ("jeans", "jeans"),
        ("sunglasses", "sunglasses"),
        ("guacamole", "guacamole"),
    ],
)
def test_with_article(name: str, expected: str) -> None:
    assert with_article(name) == expected


def test_display_names_fix_wordnet_lemmas() -> None:
    assert display_name("tabby") == "tabby cat"
    assert display_name("jean") == "jeans"
    assert display_name("espresso") == "espresso"


def test_merge_tags_sums_labels_that_read_the_same() -> None:
    merged = merge_tags([Tag("sunglass", 0.3), Tag("sunglasses", 0.3), Tag("mask", 0.4)])
    assert merged[0] == Tag("sunglasses", pytest.approx(0.6))
    assert [t.label for t in merged] == ["sunglasses", "mask"]


def test_confident_label_is_stated() -> None:
    assert compose([Tag("tabby", 0.8), Tag("tiger cat", 0.1)]) == "A photo of a tabby cat."


def test_plural_label_takes_no_article() -> None:
    assert compose([Tag("jean", 0.7), Tag("miniskirt", 0.05)]) == "A photo of jeans."


def test_food_is_placed_in_its_container() -> None:
    tags = [Tag("espresso", 0.9), Tag("cup", 0.035), Tag("coffee mug", 0.013)]
    assert compose(tags) == "A photo of an espresso in a cup."


def test_two_strong_labels_are_both_named() -> None:
    assert subject_phrase([Tag("moped", 0.55), Tag("motor scooter", 0.3)]) == "a moped or a motor scooter"


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (0.35, "A photo of what may be a missile."),
        (0.17, "A photo of something like a missile."),
        (0.05, "An image with no clearly recognisable subject."),
    ],
)
def test_weak_labels_are_hedged_or_dropped(score: float, expected: str) -> None:
    assert compose([Tag("missile", score), Tag("projectile", 0.03)]) == expected


def test_no_tags_is_not_an_error() -> None:
    assert compose([]) == "An image with no clearly recognisable subject."


def test_much_text_makes_a_document_whatever_the_classifier_says() -> None:
    lines = [TextLine("Region-based segmentation", 0.99), TextLine("Let us first determine markers", 0.93)]
    sentence = compose([Tag("pill bottle", 0.6)], lines)
    assert sentence == "A document with the text: 'Region-based segmentation Let us first determine markers'."


def test_short_text_is_added_to_the_subject() -> None:
    sentence = compose([Tag("street sign", 0.7)], [TextLine("STOP", 0.98)])
    assert sentence == "A photo of a street sign with the text 'STOP'."


def test_short_text_without_a_subject() -> None:
    assert compose([Tag("velvet", 0.05)], [TextLine("S= 2", 0.6)]) == "An image with the text 'S= 2'."


def test_empty_ocr_result_changes_nothing() -> None:
    assert compose([Tag("tabby", 0.8)], []) == "A photo of a tabby cat."


def test_long_text_is_cut_at_a_word() -> None:
    snippet = quote([TextLine("word " * 100, 0.9)], limit=22)
    assert snippet == "'word word word word…'"
