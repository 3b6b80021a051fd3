"""Turn classifier tags and OCR lines into one honest English sentence.

Pure functions, no model: the wording rules (articles, plurals, hedging by confidence) live
here so they can be unit-tested without loading anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgsvc.vision.base import Tag, TextLine

#: Scores (probabilities) that decide the wording: stated, "what may be", "something like", or dropped.
CONFIDENT = 0.5
PLAUSIBLE = 0.2
GUESS = 0.15
#: A second label is named ("a moped or a motor scooter") when it is this strong too.
RUNNER_UP = 0.2
#: This much recognised text makes the image a document rather than a photo with a sign in it.
DOCUMENT_CHARS = 40
QUOTE_CHARS = 120

# ImageNet's class names are WordNet lemmas: some are singular forms of plural-only nouns or
# terse to the point of misleading. Only names that read wrong in a sentence are listed.
DISPLAY_NAMES = {
    "tabby": "tabby cat",
    "Granny Smith": "Granny Smith apple",
    "jean": "jeans",
    "sunglass": "sunglasses",
    "pajama": "pajamas",
    "teddy": "teddy bear",
    "cock": "rooster",
    "ear": "ear of corn",
    "hip": "rose hip",
    "hotdog": "hot dog",
    "web site": "website",
    "ice bear": "polar bear",
    "lesser panda": "red panda",
    "Madagascar cat": "ring-tailed lemur",
    "ashcan": "trash can",
    "pop bottle": "soda bottle",
}
# Plural-only and mass nouns take no article ("a photo of jeans", "... of guacamole").
NO_ARTICLE = {
    "jeans", "sunglasses", "pajamas", "binoculars", "swimming trunks", "parallel bars", "chain mail",
    "guacamole", "consomme", "carbonara", "chocolate sauce", "dough", "broccoli", "cauliflower",
    "red wine", "eggnog", "mashed potato", "ice cream", "hay", "corn", "rapeseed", "velvet", "wool",
    "toilet tissue", "hen-of-the-woods",
}  # fmt: skip
# Vowel letters that sound like consonants, and the reverse ("a unicycle", "an hourglass").
_CONSONANT_SOUND = ("uni", "use", "eu", "one", "ewe", "u-")
_VOWEL_SOUND = ("hour", "honest", "honor", "honour")
# Food and drink served in or on something, to say "an espresso in a cup".
_FOOD = {
    "guacamole", "consomme", "hot pot", "trifle", "ice cream", "ice lolly", "French loaf", "bagel",
    "pretzel", "cheeseburger", "hot dog", "mashed potato", "carbonara", "chocolate sauce", "meat loaf",
    "pizza", "potpie", "burrito", "red wine", "espresso", "eggnog",
}  # fmt: skip
_CONTAINERS = {
    "cup": "in", "coffee mug": "in", "beer glass": "in", "goblet": "in", "soup bowl": "in",
    "mixing bowl": "in", "wok": "in", "frying pan": "in", "plate": "on", "tray": "on",
}  # fmt: skip
_CONTAINER_MIN = 0.02


def display_name(label: str) -> str:
    """The readable name for an ImageNet label."""
    return DISPLAY_NAMES.get(label, label)


def with_article(name: str) -> str:
    """``"espresso"`` -> ``"an espresso"``; plural-only and mass nouns stay bare."""
    if name in NO_ARTICLE:
        return name
    lower = name.lower()
    if lower.startswith(_VOWEL_SOUND):
        return f"an {name}"
    if lower.startswith(_CONSONANT_SOUND):
        return f"a {name}"
    # Initialisms are read letter by letter: "an MP3 player", "a CD player".
    head = name.split()[0]
    if head.isupper() and len(head) > 1:
        return f"an {name}" if head[0] in "AEFHILMNORSX" else f"a {name}"
    return f"an {name}" if lower[0] in "aeiou" else f"a {name}"


def merge_tags(tags: Sequence[Tag]) -> list[Tag]:
    """Tags renamed to their display names, those that read the same summed (``sunglass``/``sunglasses``)."""
    merged: dict[str, float] = {}
    for tag in tags:
        name = display_name(tag.label)
        merged[name] = merged.get(name, 0.0) + tag.score
    return [Tag(n, s) for n, s in sorted(merged.items(), key=lambda item: -item[1])]


def subject_phrase(tags: Sequence[Tag]) -> str | None:
    """The noun phrase for the likely subject, hedged by its score; None when nothing is likely.

    ``"an espresso in a cup"``, ``"a moped or a motor scooter"``, ``"what may be a missile"``,
    ``"something like a bobsled"``.
    """
    ranked = merge_tags(tags)
    if not ranked or ranked[0].score < GUESS:
        return None
    best, others = ranked[0], ranked[1:]
    phrase = with_article(best.label)
    if best.score < PLAUSIBLE:
        return f"something like {phrase}"
    if others and others[0].score >= RUNNER_UP:
        phrase += f" or {with_article(others[0].label)}"
    elif best.label in _FOOD:
        phrase += _container(others)
    return phrase if best.score >= CONFIDENT else f"what may be {phrase}"


def _container(others: Sequence[Tag]) -> str:
    for tag in others:
        if tag.label in _CONTAINERS and tag.score >= _CONTAINER_MIN:
            return f" {_CONTAINERS[tag.label]} {with_article(tag.label)}"
    return ""


def quote(lines: Sequence[TextLine], limit: int = QUOTE_CHARS) -> str:
    """OCR lines joined into one quoted snippet, cut at a word boundary near ``limit``."""
    text = " ".join(" ".join(line.text.split()) for line in lines if line.text.strip())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + "…"
    return f"'{text}'"


def compose(tags: Sequence[Tag], lines: Sequence[TextLine] | None = None) -> str:
    """One sentence for one image from its top tags (best first) and any OCR lines."""
    text_chars = sum(len(line.text.strip()) for line in lines or ())
    subject = subject_phrase(tags)
    if text_chars >= DOCUMENT_CHARS:
        # Lots of text: the classifier's object guess (often "pill bottle" for a page) is noise.
        return f"A document with the text: {quote(lines or ())}."
    if subject is None:
        if text_chars:
            return f"An image with the text {quote(lines or ())}."
        return "An image with no clearly recognisable subject."
    sentence = f"A photo of {subject}"
    if text_chars:
        sentence += f" with the text {quote(lines or ())}"
    return sentence + "."
