"""From what the scene describer's models reported to what we believe, and from that to one sentence.

Pure functions over plain data: an :class:`Evidence` holds one image's raw model outputs (person
boxes, COCO boxes, faces with emotions, ImageNet tags of the whole image and of each box's crop,
OCR lines); :func:`read_scene` weighs them into a :class:`Scene`; :func:`compose_scene` writes it.
The tests feed recorded detector outputs, so every wording rule is checked without a model.

The rules, in one place: a detector's label stands unhedged only when something independent
agrees (the classifier on its crop, or on the whole photo); where the classifier agrees only on
the kind, the box is named by its kind ("an animal", "some fruit"); a sure box nothing agrees with
is a guess ("what may be a bicycle"); where several boxes share a label, each needs its own crop
to agree before it is counted; a "dining table" the classifier cannot confirm stands where
people are at it. The classifier overrules a detector's label only within one kind (a "dog" box
becomes a cat, never a cup), only when it is sure and, for a weak box, only where the whole photo
has room for the new name. Counts come only from boxes that stand. People: a box counts from
PERSON_SCORE, or from SECOND_LOOK where a sure person was found (back rows, frame edges); a weak
box only the person detector saw needs the other detector's agreement. A face counts only inside a
person. Text on something that is not a page is "a sign that reads ...". On a thumbnail (too few
pixels for the models, :attr:`Evidence.small`) the people are counted and the rest is one guess.
Weak evidence makes the sentence shorter or hedged, never a confident wrong noun.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Any

from imgsvc.vision.base import Box, Detection, Face, Tag, TextLine
from imgsvc.vision.classifier.sentences import DOCUMENT_CHARS, display_name, quote, with_article
from imgsvc.vision.scene.boxes import overlap
from imgsvc.vision.scene.kinds import KIND_RANK, SAID_AS, best_kind, imagenet_kinds, kind_masses
from imgsvc.vision.scene.surfaces import GRASS, GREENERY, SKY

#: A person box counts from this score, whichever detector gave it.
PERSON_SCORE = 0.5
#: Where a person of at least PERSON_SCORE was found, a second look counts boxes from this score
#: that are not the same person (the back row at a table, someone cut by the frame's edge).
SECOND_LOOK = 0.3
#: ... and only boxes this large (of the photo's area): slivers at the frame's edge and specks in
#: a composite's seam were the second look's false people.
SECOND_LOOK_AREA = 0.03
#: A box only the person detector gave, below this, needs the general detector to agree
#: (SSDLite's 0.51 "person" on a honey bee; no COCO person box there).
LONE_PERSON = 0.6
#: ... at any score where the classifier is this sure the photo is of an animal (a crab's legs, 0.73
#: "person" twice on a GCompris photo the classifier calls rock and fiddler crab, CenterNet no one).
ANIMAL_PHOTO = 0.5
#: Boxes whose overlap is this large (IoU), or one this much inside the other, are one person.
SAME_PERSON_IOU = 0.5
SAME_PERSON_INSIDE = 0.7
#: This much of a face box must lie inside a person box for the face to be that person's.
FACE_INSIDE = 0.8
#: The emotion model must be this sure of "happy" to call a face smiling.
SMILE_SCORE = 0.8
#: People (their boxes' middles over a "dining table" box, reaching across its top edge) that
#: confirm the table: one person at a desk is not a group at a table; the card players were six.
TABLE_PEOPLE = 2
#: COCO boxes below this are ignored (unless their class's detector threshold is lower and the crop
#: agrees); from SURE_OBJECT they are named without the classifier's support
#: (0.51 "umbrella" on scikit-image's retina is below it; real objects the classifier recognises are not).
OBJECT_SCORE = 0.3
SURE_OBJECT = 0.6
#: Summed (folded) probability of one noun at which the classifier is sure, alone or against a detector.
SURE_NOUN = 0.6
#: ... and of an object it alone names, with no box to agree, that is a tool, a utensil or a
#: gadget (not a flower, a fruit or a building, :data:`NATURAL_KINDS`): ImageNet has a can opener, a letter
#: opener and a hook but no pliers, tweezers or sickle, and said those at 0.6-0.78 on GCompris's
#: tool photos, where its right hammers, pans and balls scored 0.66-0.99. Below it such an object
#: is a guess ("what may be a can opener").
SURE_LONE_OBJECT = 0.8
#: The crop's probability of a box's own noun that corroborates the box.
SUPPORT = 0.1
#: The crop's probability of the box's kind (animal, vehicle) that makes a weak box a hedged guess.
KIND_SUPPORT = 0.3
#: The crop's probability of "animal" at which a box the detector is unsure of, whose crop holds
#: under KIND_SUPPORT of the box's own group (ANIMAL_GROUPS), is said as "an animal": a 0.55 "bird"
#: on a pika the classifier calls weasel, marmot and squirrel. The two agree on an animal; the crop
#: speaks against a bird. A crop in the box's group keeps the guess (a weak "horse" whose crop is
#: dog breeds is still "what may be a horse"). Such boxes count nothing: none is said beside a
#: named animal (a weaker box by a named bison is the bison again), at most one otherwise.
SURE_ANIMAL_CROP = 0.5
#: The group (a kind of :mod:`~imgsvc.vision.scene.kinds`) a COCO animal belongs to; "mammal" for the rest.
ANIMAL_GROUPS = {"bird": "bird", "cat": "cat", "dog": "dog"}
#: Kinds said beside people where nothing else is: what people play or use (a band's instruments
#: spread the classifier over their classes: kinds.SPREAD_KINDS spares them the concentration test).
HELD_KINDS = frozenset({"musical instrument"})
#: Folded probability of a place (seashore, alp) that earns "on a beach", "in the mountains".
PLACE_SCORE = 0.5
#: Kinds in which the classifier may rename a detector's box.
RENAMEABLE_KINDS = frozenset({"animal", "vehicle"})
#: A sure box whose crop the classifier puts only in the same kind is named by the kind: the
#: detector and the classifier agree on that much ("bear" 0.67 on a quokka the classifier calls a
#: wombat or a wallaby is "an animal").
KIND_NOUNS = {"animal": "animal", "vehicle": "vehicle", "food": "food", "fruit": "fruit"}
#: Fruit, COCO's and ImageNet's (whose table files fruit under "object", as WordNet does): a fruit
#: box whose crop is some other fruit is "some fruit".
FRUIT = frozenset(
    {"banana", "apple", "orange", "lemon", "Granny Smith", "pineapple", "strawberry", "fig", "pomegranate"}
    | {"custard apple", "jackfruit"}
)
#: A line of text is said as a sign only from this confidence (RapidOCR's own score) ...
SIGN_CONFIDENCE = 0.9
#: ... and with this many letters or digits: "★", "M6" and "S=" on coins and textures are noise.
SIGN_CHARS = 3
#: Kinds that are where a photo was taken rather than a thing in it: named, when sure, before
#: boxes no larger than SMALL_BOX (of the photo's area) that are all the detectors found.
SETTINGS = frozenset({"building", "shop", "bridge"})
SMALL_BOX = 0.1
#: People whose boxes are each under this share of the photo are passers-by before what it is of
#: (on GCompris's monument photos, tourists 0.1-1 % of the frame): a sure building leads the sentence.
SMALL_PERSON = 0.02
#: COCO classes that carry print: a box the classifier cannot confirm is still a guess where the
#: photo has lines of words (a cover's title is the independent word a crop of it does not give:
#: the classifier calls two books a carton and a mousetrap), and the words are its text, not a sign.
PRINTED = frozenset({"book"})
#: With nothing sure, the classifier's places (valley, lakeside, seashore ...) summed from this
#: mass make "a landscape".
OUTDOOR_SCORE = 0.6

_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
_VEHICLES = ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")
_FOOD = ("banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake")
#: COCO-80 label -> (noun, kind). The nouns match the classifier's folded nouns where both exist.
COCO_NOUNS: dict[str, tuple[str, str]] = (
    {label: (label, "animal") for label in _ANIMALS}
    | {label: (label, "vehicle") for label in _VEHICLES}
    | {label: (label, "food") for label in _FOOD}
    | {
        "person": ("person", "person"),
        "sports ball": ("ball", "object"),
        "dining table": ("table", "object"),
        "tv": ("television", "object"),
        "cell phone": ("phone", "object"),
        "mouse": ("computer mouse", "object"),
        "remote": ("remote control", "object"),
        "hair drier": ("hair dryer", "object"),
    }
)
#: Containers a drink or food is named "in" ("a cup of coffee").
CONTAINERS = frozenset({"cup", "mug", "wine glass", "bottle", "bowl"})
#: What the classifier sees in a container vouches for the container: a crop it calls espresso
#: (0.92 on scikit-image's coffee, "cup" itself 0.02) supports the detector's "cup" box.
CONTENT_KINDS = {"cup": "drink", "mug": "drink", "wine glass": "drink", "bottle": "drink", "bowl": "food"}
#: COCO classes ImageNet has no class for, and the ImageNet classes whose photos show them: its
#: photos of books are of their covers and bindings ("book jacket" 0.24 and "binder" 0.19 on a
#: crop of two books). Their summed probability on a box's crop vouches for the box as its own noun.
SHOWN_AS = {"book": frozenset({"book jacket", "binder", "comic book"})}
#: Kinds the classifier may name from a box's crop when it is sure of them (SURE_NOUN) and the box
#: is unconfirmed: CenterNet boxes the table a cup of coffee stands on, whose crop is espresso 0.9;
#: the coffee is there, unboxed, whatever the box is. Only on boxes of things that hold food (a
#: table, a bowl, food), not on an animal's or a vehicle's.
HELD = frozenset({"drink", "food"})
PLACES = {
    "seashore": "on a beach",
    "sandbar": "on a beach",
    "lakeside": "by a lake",
    "alp": "in the mountains",
    "valley": "in a valley",
    "cliff": "on a cliff",
    "promontory": "on a headland",
    "volcano": "by a volcano",
    "coral reef": "on a coral reef",
    "geyser": "by a geyser",
}
_PLURALS = {
    "person": "people",
    "computer mouse": "computer mice",
    "knife": "knives",
    "sheep": "sheep",
    "fish": "fish",
    "skis": "skis",
    "scissors": "scissors",
    "hair dryer": "hair dryers",
}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
#: Mass nouns: "coffee", not "a coffee".
_MASS = frozenset({"coffee", "broccoli", "musical instruments"})


@dataclass(frozen=True)
class Evidence:
    """What the models said about one image, unweighed. ``None`` marks a model that did not run."""

    people: Sequence[Detection] | None = None  # the person detector's boxes
    objects: Sequence[Detection] = ()  # the COCO detector's boxes, "person" included
    object_tags: Sequence[Sequence[Tag]] = ()  # the classifier on each object's crop, same order
    faces: Sequence[Face] = ()  # faces, with the emotion model's verdict where it ran
    tags: Sequence[Tag] = ()  # the classifier on the whole image, best first
    #: The classifier's longer list on the whole image (top KIND_TAGS), summed per kind; empty where
    #: not recorded (the kinds then come from ``tags``).
    wide_tags: Sequence[Tag] = ()
    lines: Sequence[TextLine] | None = None  # OCR
    greyscale: bool = False
    #: Whether the image looks like a page (mostly plain light background); None where not measured
    #: (evidence recorded before it was), which keeps the old rule: enough text makes a document.
    page: bool | None = None
    #: Whether the drawing head (:mod:`imgsvc.vision.scene.drawings`) calls it a drawing; None: not run.
    drawing: bool | None = None
    #: Whether the painting head (same module) calls it a painting; None: not run.
    painting: bool | None = None
    #: What :func:`~imgsvc.vision.scene.surfaces.surfaces` sees (sky, grass); None: not measured
    #: (the describer measures only where nothing else would be named).
    surfaces: Sequence[str] | None = None
    #: Whether the image is a thumbnail (the describer's ``SMALL_IMAGE``): too small for any thing
    #: in it to be named for sure; the people and the place are said as ever.
    small: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, for recording real model outputs as test fixtures."""

        def box(b: Box) -> list[float]:
            return [round(v, 4) for v in (b.x1, b.y1, b.x2, b.y2)]

        def det(d: Detection) -> dict[str, Any]:
            return {"label": d.label, "score": round(d.score, 4), "box": box(d.box)}

        return {
            "people": None if self.people is None else [det(d) for d in self.people],
            "objects": [det(d) for d in self.objects],
            "object_tags": [[[t.label, t.score] for t in tags] for tags in self.object_tags],
            "faces": [
                {
                    "score": round(f.score, 4),
                    "box": box(f.box),
                    "emotion": f.emotion,
                    "emotion_score": f.emotion_score,
                }
                for f in self.faces
            ],
            "tags": [[t.label, t.score] for t in self.tags],
            "wide_tags": [[t.label, t.score] for t in self.wide_tags],
            "lines": None if self.lines is None else [[ln.text, ln.confidence] for ln in self.lines],
            "greyscale": self.greyscale,
            "page": self.page,
            "drawing": self.drawing,
            "painting": self.painting,
            "surfaces": None if self.surfaces is None else list(self.surfaces),
            "small": self.small,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evidence:
        def det(d: Mapping[str, Any]) -> Detection:
            return Detection(d["label"], d["score"], Box(*d["box"]))

        return cls(
            people=None if data["people"] is None else [det(d) for d in data["people"]],
            objects=[det(d) for d in data["objects"]],
            object_tags=[[Tag(*t) for t in tags] for tags in data["object_tags"]],
            faces=[Face(f["score"], Box(*f["box"]), f["emotion"], f["emotion_score"]) for f in data["faces"]],
            tags=[Tag(*t) for t in data["tags"]],
            wide_tags=[Tag(*t) for t in data.get("wide_tags", ())],
            lines=None if data["lines"] is None else [TextLine(*ln) for ln in data["lines"]],
            greyscale=data["greyscale"],
            page=data.get("page"),
            drawing=data.get("drawing"),
            painting=data.get("painting"),
            surfaces=data.get("surfaces"),
            small=data.get("small", False),
        )


@dataclass(frozen=True)
class Thing:
    """Something we will name: a folded noun, its box (None for the classifier's whole-image nouns)."""

    noun: str
    score: float
    box: Box | None = None
    sure: bool = True  # False: mentioned only as a guess ("what may be a horse"), when nothing is sure


@dataclass(frozen=True)
class Scene:
    """What we believe is in the image, ready to be written down."""

    people: list[Detection] = field(default_factory=list)
    faces: list[Face] = field(default_factory=list)  # faces inside those people
    smiling: int = 0
    things: list[Thing] = field(default_factory=list)  # most prominent first
    place: str | None = None
    greyscale: bool = False
    lines: Sequence[TextLine] | None = None
    page: bool | None = None
    drawing: bool = False
    painting: bool = False
    surfaces: Sequence[str] = ()
    #: A thumbnail (:attr:`Evidence.small`): the things are said, but only as guesses.
    small: bool = False

    @property
    def objects(self) -> list[Detection]:
        """Every box we stand by (people first), with the label the sentence uses."""
        boxed = [Detection(t.noun, t.score, t.box) for t in self.things if t.box is not None and t.sure]
        return list(self.people) + ([] if self.small else boxed)


# --- the classifier's nouns --------------------------------------------------------------------


@cache
def imagenet_nouns() -> dict[str, tuple[str, str | None]]:
    """ImageNet label -> (folded common noun, kind), from the generated ``data/imagenet_nouns.tsv``.

    The two labels ImageNet uses twice (crane the bird and the machine; maillot) keep their own
    name and no kind, so they never overrule a detector.
    """
    text = resources.files("imgsvc.vision").joinpath("data/imagenet_nouns.tsv").read_text("utf-8")
    table: dict[str, tuple[str, str | None]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        label, noun, kind = line.split("\t")
        table[label] = (label, None) if label in table and table[label] != (noun, kind) else (noun, kind)
    return table


def fold(tags: Sequence[Tag]) -> dict[str, float]:
    """Probabilities summed per folded noun, best first (tabby 0.1 + Egyptian cat 0.8 -> cat 0.9)."""
    nouns = imagenet_nouns()
    mass: dict[str, float] = {}
    for tag in tags:
        noun = nouns.get(tag.label, (tag.label, None))[0]
        mass[noun] = mass.get(noun, 0.0) + tag.score
    return dict(sorted(mass.items(), key=lambda item: -item[1]))


def kinds(tags: Sequence[Tag]) -> dict[str, float]:
    """Probabilities summed per kind (animal, vehicle, ...)."""
    nouns = imagenet_nouns()
    mass: dict[str, float] = {}
    for tag in tags:
        kind = nouns.get(tag.label, (tag.label, None))[1]
        if kind:
            mass[kind] = mass.get(kind, 0.0) + tag.score
    return mass


#: Kinds of object the classifier knows well enough from its many classes of them: a flower, a
#: fruit or a building it names alone at the usual bar.
NATURAL_KINDS = frozenset(
    {"flower", "tree", "mushroom", "fruit", "vegetable", "plant", "food", "building", "shop", "bridge"}
)


@cache
def noun_kinds(noun: str) -> frozenset[str]:
    """The kinds of the ImageNet classes folded into ``noun`` ("can opener" -> {"tool"})."""
    table = imagenet_kinds()
    return frozenset(
        kind
        for label, (folded, _) in imagenet_nouns().items()
        if folded == noun
        for kind in table.get(label, ())
    )


def said_kinds(noun: str) -> set[str]:
    """:func:`noun_kinds` as the sentence says them ("electronic equipment" -> "electronic device")."""
    return {SAID_AS.get(kind, kind) for kind in noun_kinds(noun)}


@cache
def kindless_object(noun: str) -> bool:
    """An ImageNet object noun that is no plant, food or building (a hammer, a modem; not a daisy)."""
    return kind_of(noun) == "object" and not NATURAL_KINDS & noun_kinds(noun)


def kind_of(noun: str) -> str | None:
    for coco_noun, kind in COCO_NOUNS.values():
        if coco_noun == noun:
            return kind
    for folded, kind in imagenet_nouns().values():
        if folded == noun:
            return kind
    return None


# --- geometry ----------------------------------------------------------------------------------


def iou(a: Box, b: Box) -> float:
    inter = overlap(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def inside(a: Box, b: Box) -> float:
    """The fraction of ``a`` that lies inside ``b``."""
    return overlap(a, b) / a.area if a.area > 0 else 0.0


def relation(subject: Box, other: Box) -> str | None:
    """Where ``subject`` is relative to ``other``, only when the boxes say it plainly.

    Side by side (little horizontal overlap): left/right of. Overlapping, with the subject's
    bottom edge clearly lower (nearer the camera on a floor or road) and much of it over the
    other: in front of; clearly higher and sticking out above: behind. Otherwise None.
    """
    narrower = min(subject.x2 - subject.x1, other.x2 - other.x1)
    x_overlap = max(0.0, min(subject.x2, other.x2) - max(subject.x1, other.x1))
    if narrower > 0 and x_overlap <= 0.25 * narrower:
        return "to the left of" if subject.center[0] < other.center[0] else "to the right of"
    covered = inside(subject, other)
    if covered >= 0.3 and subject.y2 >= other.y2 + 0.05:
        return "in front of"
    if covered >= 0.3 and subject.y2 <= other.y2 - 0.1 and subject.y1 < other.y1 - 0.05:
        return "behind"
    return None


def in_a_row(boxes: Sequence[Box]) -> bool:
    """Side by side: no two boxes overlap much across, and their middles are at about one height."""
    ordered = sorted(boxes, key=lambda b: b.x1)
    for left, right in pairwise(ordered):
        narrower = min(left.x2 - left.x1, right.x2 - right.x1)
        if max(0.0, left.x2 - right.x1) > 0.3 * narrower:
            return False
    middles = [b.center[1] for b in boxes]
    return max(middles) - min(middles) <= 0.25


# --- weighing the evidence ---------------------------------------------------------------------


def merge_people(evidence: Evidence) -> list[Detection]:
    """Person boxes from both detectors, each person once.

    The person detector's boxes go first (it is the specialist); a COCO "person" box is added
    only where it is not the same person (overlapping much, or one mostly inside the other). A
    weak box only the specialist saw needs a general box on the same person. Where someone was
    found, a second look takes the weaker boxes that are nobody already counted.

    Each counted person is matched to at most one COCO box: where the specialist drew one box
    over two people (a woman seated in front of a man standing behind her), the general
    detector's two boxes that are not the same person count as two.
    """
    specialist = sorted(evidence.people or (), key=lambda d: -d.score)
    general = sorted((d for d in evidence.objects if d.label == "person"), key=lambda d: -d.score)

    def same_person(a: Detection, b: Detection) -> bool:
        return (
            iou(a.box, b.box) >= SAME_PERSON_IOU
            or inside(a.box, b.box) >= SAME_PERSON_INSIDE
            or inside(b.box, a.box) >= SAME_PERSON_INSIDE
        )

    kept: list[Detection] = []
    claimed: dict[int, Detection] = {}  # index in kept -> the COCO box matched to that person

    def is_counted(candidate: Detection) -> bool:
        """Whether the candidate is someone already counted; a COCO box claims who it matches."""
        if candidate in specialist:
            return any(same_person(candidate, k) for k in kept)
        matches = [
            i
            for i, k in enumerate(kept)
            if same_person(candidate, k) and (i not in claimed or same_person(candidate, claimed[i]))
        ]
        free = [i for i in matches if i not in claimed]
        if free:
            claimed[max(free, key=lambda i: iou(candidate.box, kept[i].box))] = candidate
        return bool(matches)

    def count(candidate: Detection) -> None:
        if candidate in general:
            claimed[len(kept)] = candidate
        kept.append(candidate)

    animal_photo = kinds(evidence.tags).get("animal", 0.0) >= ANIMAL_PHOTO
    for candidate in [*specialist, *general]:
        if candidate.score < PERSON_SCORE:
            continue
        lone = (candidate.score < LONE_PERSON or animal_photo) and candidate in specialist
        if lone and not any(g.score >= SECOND_LOOK and same_person(candidate, g) for g in general):
            continue
        if not is_counted(candidate):
            count(candidate)
    if kept:
        for candidate in [*specialist, *general]:
            weak = SECOND_LOOK <= candidate.score < PERSON_SCORE and candidate.box.area >= SECOND_LOOK_AREA
            if weak and not is_counted(candidate):
                count(candidate)
    return kept


def weigh_object(
    detection: Detection, crop_tags: Sequence[Tag], own_crop: bool = True, whole: Sequence[Tag] | None = None
) -> Thing | None:
    """One COCO box against the classifier's view of its crop: kept, renamed, hedged or dropped.

    ``own_crop`` False: the tags are the whole photo's and other boxes share this box's label. The
    whole photo's "orange" says there is an orange, not that each of six boxes is one, so such a box
    is named at most by its kind ("some fruit") and never counts toward its own noun. ``whole``: the
    whole photo's (wide) tags, where a weak box's new name must find its group (:func:`fits_photo`).
    """
    noun, kind = COCO_NOUNS.get(detection.label, (detection.label, "object"))
    nouns = fold(crop_tags)
    crop_kinds = kinds(crop_tags)
    fruit = {n: m for n, m in nouns.items() if n in FRUIT}
    if noun in FRUIT:
        # COCO's only citrus is "orange": a lemon or a lime slice is one to CenterNet. Its crop
        # agrees only where the box's own fruit is the surest fruit the classifier sees there.
        agrees = nouns.get(noun, 0.0) >= SUPPORT and max(fruit, key=fruit.__getitem__) == noun
    else:
        agrees = nouns.get(noun, 0.0) >= SUPPORT
    agrees = agrees or crop_kinds.get(CONTENT_KINDS.get(noun, ""), 0.0) >= KIND_SUPPORT
    shown = SHOWN_AS.get(noun, frozenset())
    agrees = agrees or sum(t.score for t in crop_tags if t.label in shown) >= SUPPORT
    if agrees and own_crop:
        # The detector reports a box below OBJECT_SCORE only for the classes its threshold table
        # lowers (centernet.CLASS_THRESHOLDS), and such a box stands only here, where the crop agrees.
        return Thing(noun, detection.score, detection.box)
    if detection.score < OBJECT_SCORE:
        return None
    best, mass = next(iter(nouns.items()), ("", 0.0))
    renameable = (kind in RENAMEABLE_KINDS and kind_of(best) == kind) or (noun in FRUIT and best in FRUIT)
    rename = own_crop and renameable and mass >= SURE_NOUN
    if rename and (detection.score >= SURE_OBJECT or whole is None or fits_photo(best, whole)):
        return Thing(best, detection.score, detection.box)  # "dog" 0.47 on a crop the classifier calls a cat
    if noun in FRUIT:
        kind, kind_agrees = "fruit", sum(fruit.values()) >= KIND_SUPPORT
    else:
        kind_agrees = crop_kinds.get(kind, 0.0) >= KIND_SUPPORT
    if detection.score >= SURE_OBJECT and kind_agrees and kind in KIND_NOUNS:
        # Sure of something of this kind, and the classifier agrees on the kind only: name the kind.
        return Thing(KIND_NOUNS[kind], detection.score, detection.box)
    if kind == "animal" and own_crop and crop_kinds.get(kind, 0.0) >= SURE_ANIMAL_CROP:
        group = kind_masses(crop_tags).get(ANIMAL_GROUPS.get(noun, "mammal"), 0.0)
        if group < KIND_SUPPORT:
            # The crop is sure of an animal, and not of this box's group: the kind stands
            # (read_scene drops it where a named animal is there already).
            return Thing(KIND_NOUNS[kind], detection.score, detection.box)
    if detection.score >= SURE_OBJECT or (kind in RENAMEABLE_KINDS and kind_agrees):
        return Thing(noun, detection.score, detection.box, sure=False)  # nothing independent agrees
    return None


def fits_photo(noun: str, whole: Sequence[Tag]) -> bool:
    """Whether the whole photo holds KIND_SUPPORT of the noun's narrowest kind (mammal, bird, fish ...).

    A weak box's crop can be sure of an animal the photo has no room for: a 0.43 "bird" box on a
    cygnet beside swans, whose crop (a JPEG re-encoding of the photo) is 0.70 "ice bear", where the
    whole photo is pelican, flamingo, black swan and goose. Every right rename on scikit-image's and
    the tuning photos (bird boxes on a cheetah, a monkey, fish and a bee) had 0.67 or more behind it;
    the bear 0.00.
    """
    group = min(noun_kinds(noun), key=lambda k: KIND_RANK.get(k, len(KIND_RANK)), default=None)
    return group is None or kind_masses(whole).get(group, 0.0) >= KIND_SUPPORT


def at_table(table: Detection, people: Sequence[Detection]) -> bool:
    """Whether people are at this table box: the independent word on a "dining table" that the
    classifier cannot give (a crop of a table top with cups and cards is a toyshop or an altar to it).

    The box is wider than tall and at least TABLE_PEOPLE people (from the person detector as much as
    CenterNet) reach down across its top edge, within its width: a group round a table.
    """
    box = table.box
    if table.score < OBJECT_SCORE or box.x2 - box.x1 < box.y2 - box.y1:
        return False
    around = [p for p in people if p.box.y1 < box.y1 < p.box.y2 and box.x1 < p.box.center[0] < box.x2]
    return len(around) >= TABLE_PEOPLE


def read_scene(evidence: Evidence) -> Scene:
    """Weigh one image's evidence into what we believe (see the module docstring for the rules)."""
    people = merge_people(evidence)
    faces = [f for f in evidence.faces if any(inside(f.box, p.box) >= FACE_INSIDE for p in people)]
    smiling = sum(1 for f in faces if f.emotion == "happy" and (f.emotion_score or 0.0) >= SMILE_SCORE)

    wide = evidence.wide_tags or evidence.tags  # what the kinds and renames are weighed on
    boxed = []
    held: dict[str, float] = {}  # food and drink the classifier is sure of on a box it does not confirm
    shared = Counter(d.label for d in evidence.objects)
    for i, detection in enumerate(evidence.objects):
        if detection.label == "person":
            continue
        crop_tags = evidence.object_tags[i] if i < len(evidence.object_tags) else evidence.tags
        # Boxes past the describer's crop budget carry the whole photo's tags: they count only alone.
        own_crop = shared[detection.label] == 1 or list(crop_tags) != list(evidence.tags)
        thing = weigh_object(detection, crop_tags, own_crop, wide or None)
        unconfirmed = thing is None or not thing.sure
        if detection.label == "dining table" and unconfirmed and at_table(detection, people):
            thing = Thing("table", detection.score, detection.box)
        printed = detection.label in PRINTED and detection.score >= OBJECT_SCORE
        if printed and thing is None and sign_lines(evidence.lines or ()):
            thing = Thing(detection.label, detection.score, detection.box, sure=False)
        if thing is not None:
            boxed.append(thing)
        # Not on an animal's or a vehicle's box: a dachshund the classifier calls a hotdog is no food.
        holder = COCO_NOUNS.get(detection.label, (detection.label, "object"))[1] in {"object", "food"}
        best, mass = next(iter(fold(crop_tags).items()), ("", 0.0))
        if (
            holder
            and own_crop
            and mass >= SURE_NOUN
            and kind_of(best) in HELD
            and (thing is None or thing.noun != best)
        ):
            held[best] = max(held.get(best, 0.0), mass)
    # Animals first (people say "a cat next to a motorcycle"), then by size times score.
    boxed.sort(key=lambda t: (kind_of(t.noun) != "animal", -(t.box.area if t.box else 0.0) * t.score))

    named = {t.noun for t in boxed if t.sure} | ({"person"} if people else set())
    whole = fold(evidence.tags)
    sure_nouns = {noun: mass for noun, mass in whole.items() if mass >= SURE_NOUN} | held
    unboxed = [
        Thing(noun, mass, sure=mass >= SURE_LONE_OBJECT or noun in held or not kindless_object(noun))
        for noun, mass in sure_nouns.items()
        if noun not in named and noun not in PLACES
    ]
    weak_animals = [t for t in boxed if t.noun == "animal" and t.score < SURE_OBJECT]
    if weak_animals:
        # Weak boxes said as "an animal" count nothing: beside a named animal (boxed or the whole
        # photo's) they are that animal again, and two of them are one animal's halves as often as
        # two animals. At most the surest is said.
        named_animal = any(
            t.sure and t.noun != "animal" and kind_of(t.noun) == "animal" for t in (*boxed, *unboxed)
        )
        kept = set() if named_animal else {id(max(weak_animals, key=lambda t: t.score))}
        boxed = [t for t in boxed if t.noun != "animal" or t.score >= SURE_OBJECT or id(t) in kept]
    outdoors = kinds(evidence.tags).get("place", 0.0)
    if outdoors >= OUTDOOR_SCORE and not people and not unboxed and not any(t.sure for t in boxed):
        # Nothing sure, but the classifier's places together are: a valley, a lakeside or a shore.
        unboxed = [Thing("landscape", outdoors)]
    if not people and not unboxed and not boxed:
        # No class is sure, but many of one kind together may be: daisy + yellow lady's slipper +
        # pot is "a plant", church + palace + monastery "a building"; a fair guess is hedged. Not
        # beside a detector's box: on scikit-image's horse the dog breeds add up to a sure "dog".
        kind = best_kind(wide)
        if kind is not None:
            unboxed = [Thing(kind.noun, kind.mass, sure=kind.sure)]
    elif not people and not boxed and len(unboxed) == 1 and not unboxed[0].sure:
        # A lone object under its bar (pliers the classifier calls "a can opener" at 0.78) whose
        # kind is sure is said by its kind: "a tool" is right where the noun may not be.
        kind = best_kind(wide)
        if kind is not None and kind.sure and kind.noun in said_kinds(unboxed[0].noun):
            unboxed = [Thing(kind.noun, kind.mass)]
    elif (
        all(p.box.area < SMALL_PERSON for p in people)
        and not unboxed
        and all(t.box is not None and t.box.area < SMALL_BOX for t in boxed)
    ):
        # Small boxes, or tourists, in front of a building the whole photo is of (a car before a
        # shop front, three people under the leaning tower): the building is a subject; the kind
        # must be sure, since a box is there to disagree.
        kind = best_kind(wide)
        if kind is not None and kind.sure and kind.noun in SETTINGS:
            boxed = [Thing(kind.noun, kind.mass), *boxed]
    if people and not any(t.sure for t in (*boxed, *unboxed)):
        # People and nothing else sure: what they hold, where the classifier is sure of its kind
        # (a band: cello, bassoon and sax, "musical instrument" 0.77 over its classes; a cello
        # alone at 0.65, under the lone object's bar, is one of them too).
        kind = best_kind(wide)
        if kind is not None and kind.sure and kind.noun in HELD_KINDS:
            unboxed = [Thing(kind.noun if len(people) == 1 else plural(kind.noun), kind.mass)]
    place = next((PLACES[n] for n, m in whole.items() if n in PLACES and m >= PLACE_SCORE), None)
    return Scene(
        people=people,
        faces=faces,
        smiling=min(smiling, len(people)),
        things=boxed + unboxed,
        place=place,
        greyscale=evidence.greyscale,
        lines=evidence.lines,
        page=evidence.page,
        drawing=bool(evidence.drawing),
        painting=bool(evidence.painting),
        surfaces=tuple(evidence.surfaces or ()),
        small=evidence.small,
    )


def sign_lines(lines: Sequence[TextLine]) -> list[TextLine]:
    """The lines that are plainly words, not specks read as letters; the rest is never said as a sign.

    Whichever read gave them: OCR=auto reads paintings and textures whose brushwork has the rhythm
    of lines of text (a graffiti mural on the tuning half reads 'HLR' at 0.87).
    """
    return [
        line
        for line in lines
        if line.confidence >= SIGN_CONFIDENCE and sum(c.isalnum() for c in line.text) >= SIGN_CHARS
    ]


# --- writing it down ---------------------------------------------------------------------------


def plural(noun: str) -> str:
    if noun in _PLURALS:
        return _PLURALS[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def counted(noun: str, count: int) -> str:
    """``"a cat"``, ``"two cups"``, ``"12 people"``."""
    name = display_name(noun)
    if count == 1:
        return name if name in _MASS else with_article(name)
    number = _NUMBERS[count] if count < len(_NUMBERS) else str(count)
    return f"{number} {plural(name)}"


def people_phrase(scene: Scene) -> str:
    """``"a smiling person"``, ``"two people side by side, one of them smiling"``."""
    count, smiling = len(scene.people), scene.smiling
    if count == 1:
        return "a smiling person" if smiling else "a person"
    phrase = counted("person", count)
    if smiling == count:
        phrase = phrase.replace(" people", " smiling people")
    if in_a_row([p.box for p in scene.people]):
        phrase += " side by side"
    if 0 < smiling < count:
        phrase += f", {_NUMBERS[smiling] if smiling < len(_NUMBERS) else smiling} of them smiling"
    return phrase


def phrases(things: Sequence[Thing]) -> list[tuple[str, str, list[Box]]]:
    """The noun, its phrase and its boxes per sure noun, most prominent first ("two cups", "a cup of coffee").

    A drink or food the classifier saw in the whole image goes into a container a detector
    boxed, rather than standing beside it.
    """
    groups: dict[str, list[Thing]] = {}
    for thing in things:
        if thing.sure:
            groups.setdefault(thing.noun, []).append(thing)
    contents = [
        noun
        for noun, items in groups.items()
        if items[0].box is None and kind_of(noun) in {"drink", "food"} and noun not in COCO_NOUNS
    ]
    container = any(noun in CONTAINERS for noun in groups)
    result = []
    for noun, items in groups.items():
        if noun in contents and container:
            continue
        phrase = f"some {noun}" if noun in {"food", "fruit"} else counted(noun, len(items))
        if noun in CONTAINERS and contents:
            phrase += f" of {contents[0]}"
        result.append((noun, phrase, [t.box for t in items if t.box is not None]))
    return result


def join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def with_rest(subject: str, words: Sequence[str]) -> str:
    """``subject`` and what comes with it; "six people, two of them smiling, with a table": the
    smiles belong to the people, not the table."""
    joint = ", with" if "," in subject else " with"
    return f"{subject}{joint} {join(words)}" if words else subject


def first_guess(scene: Scene) -> Thing | None:
    """What is said as "what may be ...": alone, the first guess; beside what is named (people, sure
    things), only a box whose noun is not named ("a horse with what may be a horse" says nothing)."""
    named = {t.noun for t in scene.things if t.sure} | ({"person"} if scene.people else set())
    return next(
        (t for t in scene.things if not t.sure and t.noun not in named and (t.box is not None or not named)),
        None,
    )


def thumbnail_phrase(scene: Scene) -> str | None:
    """:func:`subject_and_rest` for a thumbnail: the people, then every thing as one guess.

    The models see a thumbnail's few pixels blown up and stay as sure as ever of the wrong noun
    ("a space shuttle" on a castle's turret 74 px across): what they saw is said, hedged, without
    positions, and after the people even where a building would lead at full size. The guess said
    beside it is the one full size would say ("an animal and a giraffe"). People are still counted
    (two detectors must agree on each).
    """
    guess = first_guess(scene)
    seen = [phrase for _, phrase, _ in phrases(scene.things)] + ([counted(guess.noun, 1)] if guess else [])
    things = [f"what may be {join(seen)}"] if seen else []
    if not scene.people:
        return things[0] if things else None
    return with_rest(people_phrase(scene), things)


def subject_and_rest(scene: Scene) -> str | None:
    """The noun phrase after "A photo of"; None when nothing is sure enough to name."""
    if scene.small:
        return thumbnail_phrase(scene)
    named_phrases = phrases(scene.things)
    rest = [(phrase, boxes) for _, phrase, boxes in named_phrases]
    passers_by = scene.people and all(p.box.area < SMALL_PERSON for p in scene.people)
    setting = next(
        (
            i
            for i, (noun, _, boxes) in enumerate(named_phrases)
            if passers_by and not boxes and is_setting(noun)
        ),
        None,
    )
    if setting is not None:
        # "a palace with three people": the passers-by come after what the photo is of.
        subject, boxes = rest[setting][0], []
        rest = [(people_phrase(scene), [p.box for p in scene.people]), *rest[:setting], *rest[setting + 1 :]]
    elif scene.people:
        subject, boxes = people_phrase(scene), [p.box for p in scene.people]
    elif rest:
        (subject, boxes), rest = rest[0], rest[1:]
    else:
        guess = first_guess(scene)  # nothing is named: the first guess, boxed or not
        return f"what may be {counted(guess.noun, 1)}" if guess else None
    if rest and len(boxes) == 1 and len(rest[0][1]) == 1:
        where = relation(boxes[0], rest[0][1][0])
        if where:
            subject = f"{subject} {where} {rest[0][0]}"
            rest = rest[1:]
    # A box nothing independent confirmed is still worth a hedge beside what is sure, but not a
    # second box of a noun already named ("a horse with what may be a horse").
    guess = first_guess(scene)
    words = [phrase for phrase, _ in rest] + ([f"what may be {counted(guess.noun, 1)}"] if guess else [])
    return with_rest(subject, words)


def is_setting(noun: str) -> bool:
    """Whether a noun ("palace", "building") names a building, shop or bridge."""
    return noun in SETTINGS or bool(SETTINGS & noun_kinds(noun))


def view_phrase(surfaces: Sequence[str]) -> str | None:
    """What a photo with no subject shows, from its surfaces: "the sky over what may be grass"."""
    ground = next((s for s in surfaces if s in (GRASS, GREENERY)), None)
    said = {GRASS: "what may be grass", GREENERY: "what may be grass or leaves", None: None}[ground]
    if SKY in surfaces:
        return f"the sky over {said}" if said else "the sky, with no clearly recognisable subject"
    return said


def compose_scene(evidence: Evidence | Scene) -> str:
    """One sentence for one image, from its evidence (or an already weighed scene)."""
    scene = read_scene(evidence) if isinstance(evidence, Evidence) else evidence
    lines = scene.lines or ()
    text_chars = sum(len(line.text.strip()) for line in lines)
    if text_chars >= DOCUMENT_CHARS and not scene.people and scene.page is not False:
        # Lots of text on a page: the detectors' and classifier's guesses there are noise.
        return f"A document with the text: {quote(lines)}."
    subject = subject_and_rest(scene)
    # Not a page: only the lines that are plainly words are said, as a sign or a drawing's text.
    lines = sign_lines(lines)
    text_chars = sum(len(line.text.strip()) for line in lines)
    sign = None
    if text_chars:
        on_print = any(t.noun in PRINTED for t in scene.things)
        sign = f"the text {quote(lines)}" if on_print else f"a sign that reads {quote(lines)}"
    if scene.painting or scene.drawing:
        # Not a photo: say so; what is sure stands, the rest (a cartoon fish's "mouse") stays unsaid.
        # A painting first: a woodblock print is drawn too, but "a painting" is what a viewer says.
        art = "painting" if scene.painting else "drawing"
        if subject is None:
            return f"A {art} with the text {quote(lines)}." if text_chars else f"A {art}."
        return f"A {art} of {subject}" + (f" with the text {quote(lines)}" if text_chars else "") + "."
    kind = "black-and-white photo" if scene.greyscale else "photo"
    if subject is None:
        if sign:
            return f"A {kind} of {sign}."
        view = view_phrase(scene.surfaces)
        if view:
            return f"A {kind} of {view}."
        colour = "black-and-white " if scene.greyscale else ""
        return f"A{'' if colour else 'n'} {colour}image with no clearly recognisable subject."
    sentence = f"A {kind} of {subject}"
    if scene.place:
        sentence += f" {scene.place}"
    if sign:
        sentence += f" with {sign}"
    return sentence + "."
