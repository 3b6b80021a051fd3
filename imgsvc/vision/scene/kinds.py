"""What kind of thing the classifier sees when it is sure of the kind but of no one class.

ImageNet-1k has no "flower", "building" or "tree" class, but many specific ones (daisy and yellow
lady's slipper; church, palace, monastery, boathouse, cinema ...). On a dahlia the classifier
spreads its belief over daisy, pot and bee, no class reaching a sure score; summed per kind the
photo is plainly a flower. ``data/imagenet_kinds.tsv`` lists each class's kinds, most specific
first (generated from WordNet's hypernyms by ``scripts/imagenet_kinds.py``); :func:`kind_masses`
sums the classifier's probabilities over them and :func:`best_kind` picks the kind a sentence
may name, with whether it is sure or only a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from imgsvc.vision.base import Tag

#: Summed probability of a kind at which it is said plainly ("a flower").
SURE_KIND = 0.5
#: ... and at which it is said as a guess ("what may be a flower").
GUESS_KIND = 0.25
#: Broad kinds are said only when sure: a guess at "an animal" from a spread of unlike classes (red
#: fox, porcupine, bittern on dune grass) is noise, where a guess at one narrow kind is a reading.
BROAD = frozenset(
    {"food", "mammal", "invertebrate", "animal", "vehicle", "musical instrument", "tool", "furniture"}
    | {"home appliance", "electronic equipment", "measuring instrument"}
)
#: ... and only when their mass is concentrated: the kind's surest class holds this share of it.
#: On green and leafy textures the classifier spreads over the animals ImageNet photographs on
#: leaves (vine snake, green mamba, ladybug, cicada ...): on the tuning half's nuthatch on bark and
#: dune grass, and on MATE's green wallpapers, "animal" sums 0.29-0.42 over 20-33 classes whose
#: surest holds 0.14-0.25 of it; where an animal is there (a cat, a bee, a butterfly, on the tuning
#: half and scikit-image's photos) its surest class holds 0.44-0.98. Narrow kinds spread for real
#: (a marigold's daisy is 0.26 of "flower", behind the butterflies that sit on it).
BROAD_SHARE = 0.35
#: ... except mammals and musical instruments: the leafy textures spread over snakes, lizards and
#: insects, never over fur, and a mammal the classifier cannot place spreads for real (a red
#: squirrel on a trunk: spider monkey 0.24, fox squirrel 0.14, squirrel monkey 0.09, "mammal"
#: 0.72), as a band's instruments do (cello 0.24 of 0.77). Without the share, no sentence changed
#: on any of 315 wallpapers and GCompris pictures outside the development set.
SPREAD_KINDS = frozenset({"mammal", "musical instrument"})
#: Kinds never said on their own: too vague to help a reader ("a structure"), or (clothing) worn
#: by a person the detectors did not find. Their classes still count toward nothing else.
UNSAID = frozenset({"structure", "clothing"})
#: How a kind is said: broad zoological kinds read as "an animal".
SAID_AS = {
    "mammal": "animal", "invertebrate": "animal", "amphibian": "animal", "furniture": "piece of furniture",
    "home appliance": "household appliance", "electronic equipment": "electronic device",
}  # fmt: skip
#: ImageNet's bee, butterfly and hummingbird photos are mostly taken on flowers, so on a flower
#: the classifier spreads its belief over them (a marigold: sulphur butterfly 0.28, daisy 0.20,
#: bee 0.11). Where the flower classes reach FLOWER_SEEN, the pollinators count toward "flower".
POLLINATORS = frozenset(
    {"bee", "hummingbird", "admiral", "ringlet", "monarch", "cabbage butterfly", "sulphur butterfly"}
    | {"lycaenid"}
)
FLOWER_SEEN = 0.15
#: The share of a sure broad kind's mass that a narrow kind within it must hold to be said instead,
#: as a guess (:func:`narrower`).
NARROW_SHARE = 0.75


@dataclass(frozen=True)
class Kind:
    """A kind the classifier's tags add up to: its noun, summed probability, and whether it is sure."""

    noun: str
    mass: float
    sure: bool


@cache
def imagenet_kinds() -> dict[str, tuple[str, ...]]:
    """ImageNet label -> its kinds, most specific first (``daisy`` -> ``("flower", "plant")``)."""
    text = resources.files("imgsvc.vision").joinpath("data/imagenet_kinds.tsv").read_text("utf-8")
    table: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        label, kinds = line.split("\t")
        # ImageNet names two classes twice (crane, maillot): a label's kinds are those both share.
        found = tuple(k for k in kinds.split(",") if k)
        table[label] = tuple(k for k in table[label] if k in found) if label in table else found
    return table


def kind_masses(tags: Sequence[Tag]) -> dict[str, float]:
    """Probability summed per kind over the tags (a class counts toward each of its kinds)."""
    table = imagenet_kinds()
    mass: dict[str, float] = {}
    for tag in tags:
        for kind in table.get(tag.label, ()):
            mass[kind] = mass.get(kind, 0.0) + tag.score
    return mass


def concentrated(kind: str, mass: float, tags: Sequence[Tag]) -> bool:
    """Whether the kind's surest class holds at least BROAD_SHARE of the kind's mass (SPREAD_KINDS: any)."""
    table = imagenet_kinds()
    top = max((t.score for t in tags if kind in table.get(t.label, ())), default=0.0)
    return mass > 0 and (kind in SPREAD_KINDS or top >= BROAD_SHARE * mass)


def best_kind(tags: Sequence[Tag]) -> Kind | None:
    """The most specific kind that is sure; else the most specific that is a fair guess; else None.

    Sure beats specific: daisy 0.25 and pot 0.3 are "a plant" (0.55) rather than "what may be a
    flower" (0.25). The scene describer asks only where no class was sure (a bee at 0.96 is "a
    bee" before any kind is weighed). A broad kind needs its mass concentrated (BROAD_SHARE).
    """
    masses = {k: m for k, m in kind_masses(tags).items() if k not in UNSAID}
    if masses.get("flower", 0.0) >= FLOWER_SEEN:
        masses["flower"] += sum(t.score for t in tags if t.label in POLLINATORS)
    ranked = sorted(masses, key=lambda k: KIND_RANK.get(k, len(KIND_RANK)))
    for floor, sure in ((SURE_KIND, True), (GUESS_KIND, False)):
        for kind in ranked:
            broad = kind in BROAD
            if masses[kind] >= floor and (not broad or (sure and concentrated(kind, masses[kind], tags))):
                narrow = narrower(kind, masses, ranked, tags) if broad else None
                if narrow is not None:
                    return Kind(SAID_AS.get(narrow, narrow), round(masses[narrow], 4), sure=False)
                return Kind(SAID_AS.get(kind, kind), round(masses[kind], 4), sure)
    return None


def narrower(broad: str, masses: dict[str, float], ranked: list[str], tags: Sequence[Tag]) -> str | None:
    """A fair guess at a narrow kind that holds most of a sure broad kind (NARROW_SHARE).

    A fish among coral is "an animal" at 0.54 of which "fish" is 0.43: "what may be a fish" says
    more, and is still hedged. A plant of which "flower" is under half stays "a plant".
    """
    table = imagenet_kinds()
    for kind in ranked[: ranked.index(broad)]:
        if kind in BROAD or masses[kind] < GUESS_KIND:
            continue
        shared = sum(t.score for t in tags if {kind, broad} <= set(table.get(t.label, ())))
        if shared >= NARROW_SHARE * masses[broad]:
            return kind
    return None


#: Kinds from most to least specific, as ``scripts/imagenet_kinds.py`` orders them.
KIND_RANK = {
    kind: i
    for i, kind in enumerate(
        (
            "flower", "tree", "mushroom", "fruit", "vegetable", "shop", "bridge", "building", "bird", "dog",
            "cat", "butterfly", "insect", "spider", "fish", "snake", "reptile", "amphibian", "boat", "ship",
            "aircraft", "car", "plant", "food", "structure", "mammal", "invertebrate", "animal", "vehicle",
            "clothing", "musical instrument", "tool", "furniture", "home appliance", "electronic equipment",
            "measuring instrument",
        )
    )
}  # fmt: skip
