"""The offline scene describer: people, objects, faces and ImageNet tags composed into one sentence.

Several small models, each loaded once and run one photo at a time: a person detector
(SSDLite), a COCO-80 object detector (CenterNet), a face detector (BlazeFace) with an emotion
classifier on the faces, the built-in EfficientNet-Lite0 classifier (on the whole image and on
each object's crop, to confirm or rename the detector's label) and OCR where there is text.
What they report becomes an :class:`~imgsvc.vision.scene.sentences.Evidence`; the pure
:mod:`imgsvc.vision.scene.sentences` weighs it and writes the sentence.

A detector whose weights are not in MODELS_DIR (``imgsvc fetch-models`` not run, npm missing)
is left out: the describer runs with the rest, says so in one log line and in its ``name``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgsvc.vision.base import (
    Describer,
    Description,
    Detection,
    Detector,
    EmotionModel,
    Face,
    ModelLoadError,
    People,
    Tag,
)
from imgsvc.vision.classifier.describer import TOP_K, BuiltinDescriber
from imgsvc.vision.scene.blazeface import FaceDetector
from imgsvc.vision.scene.centernet import ObjectDetector, class_threshold
from imgsvc.vision.scene.drawings import DRAWING_SCORE, PAINTING_SCORE, drawing_scores, painting_scores
from imgsvc.vision.scene.emotion import EmotionClassifier
from imgsvc.vision.scene.sentences import (
    COCO_NOUNS,
    FACE_INSIDE,
    Evidence,
    compose_scene,
    inside,
    merge_people,
    read_scene,
    weigh_object,
)
from imgsvc.vision.scene.signs import sign_lines, wants_second_read
from imgsvc.vision.scene.ssd_person import PersonDetector
from imgsvc.vision.scene.surfaces import surfaces
from imgsvc.vision.scene.weights import missing_components

log = logging.getLogger("imgsvc.vision")

CLASSIFIER = "efficientnet-lite0"
#: Crops the classifier checks per image (the surest boxes first); each costs one more classifier pass.
MAX_CROPS = 4
#: Context kept around a box before classifying its crop: the classifier was trained on loose framings.
CROP_MARGIN = 0.1
#: A box covering this much of the photo is judged on the whole photo's tags, without a crop.
WHOLE_IMAGE = 0.6
#: Classes of the classifier's list on the whole photo summed per kind (flower, building ...):
#: past the top 5 the tail still carries mass when belief is spread over many classes of one kind.
KIND_TAGS = 40
#: Faces looked at per image by the emotion model (only those inside a person).
MAX_FACES = 8
#: A photo is black-and-white when no pixel's channels differ by more than this (out of 255).
GREY_TOLERANCE = 12
#: A pixel is plain paper when its channels differ by at most PAPER_CHROMA and their mean is at
#: least PAPER_LIGHT; an image is a page when PAGE_SHARE of its pixels are.
PAPER_CHROMA = 40
PAPER_LIGHT = 110
PAGE_SHARE = 0.6
#: An image whose shorter side is under this (pixels) is a thumbnail: every thing in it is said as a
#: guess (people are counted as ever). The classifier sees 224 px and CenterNet 512, so a thumbnail
#: is blown up several times over, and they stay as sure as ever of what they think they see. It is
#: the image the models get, after MAX_IMAGE_SIDE: a panorama wider than 8:1 (1024 x 120) counts,
#: since its short side is as blown up. Photos with a confident wrong noun on
#: scikit-image's photos, the tuning half and the extra set shrunk to a shorter side of N px
#: (``python -m bench quality --shrink N``), before this rule: 4 at full size, 5 at 160, 6 at 128,
#: 7 at 112 and 96, 10 at 74. Outside the development set, GCompris's 74 px details of paintings
#: were "a space shuttle" (a turret) and "a reptile".
SMALL_IMAGE = 128
#: CenterNet's strongest "person" cell (:meth:`ObjectDetector.scan`) from which the person detector
#: runs. On scikit-image's photos and the development set's tuning half, every photo where SSDLite
#: found someone had 0.45 or more, every photo without people 0.27 at most; 0.2 keeps a margin of
#: 2x below the people and skips SSDLite on four photos in five without them.
PERSON_HINT = 0.2


@dataclass(frozen=True)
class Detectors:
    """The detection models that loaded; None where the weights were missing."""

    person: Detector | None = None
    objects: ObjectDetector | None = None
    faces: Detector | None = None
    emotion: EmotionModel | None = None


#: Component name (as in ``generated_by`` and /readyz) -> (Detectors field, model class).
LOADERS: dict[str, tuple[str, type[Detector] | type[EmotionModel]]] = {
    "ssdlite-person": ("person", PersonDetector),
    "centernet": ("objects", ObjectDetector),
    "blazeface": ("faces", FaceDetector),
    "emotion": ("emotion", EmotionClassifier),
}


def load_detectors(models_dir: Path) -> tuple[Detectors, dict[str, str]]:
    """Every detector whose weights are there; and, for each one left out, why."""
    absent = set(missing_components(models_dir))
    loaded: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for component, (slot, model) in LOADERS.items():
        if component in absent:
            missing[component] = "weights not fetched"
            continue
        if component == "emotion" and "faces" not in loaded:
            missing[component] = "needs blazeface"
            continue
        try:
            loaded[slot] = model.load(models_dir)
        except ModelLoadError as exc:
            missing[component] = str(exc)
    return Detectors(**loaded), missing


def is_greyscale(image: Image.Image) -> bool:
    """No colour anywhere (a black-and-white photo stored as RGB); checked on a thumbnail."""
    thumb = image.convert("RGB")
    thumb.thumbnail((128, 128))
    pixels = np.asarray(thumb, dtype=np.int16)
    return int((pixels.max(axis=2) - pixels.min(axis=2)).max()) <= GREY_TOLERANCE


def looks_like_page(image: Image.Image) -> bool:
    """Mostly plain light background (paper, a screen), as a scan or screenshot is; checked on a thumbnail.

    Told apart from a sign in a photo: scikit-image's page has 0.86 of its pixels light and
    colourless, a circuit board with printed text 0.15, a green street sign 0.0.
    """
    thumb = image.convert("RGB")
    thumb.thumbnail((128, 128))
    pixels = np.asarray(thumb, dtype=np.int16)
    plain = (pixels.max(axis=2) - pixels.min(axis=2) <= PAPER_CHROMA) & (pixels.mean(axis=2) >= PAPER_LIGHT)
    return float(plain.mean()) >= PAGE_SHARE


def needs_crop(detection: Detection, whole: Sequence[Tag], shared: bool = False) -> bool:
    """Whether the classifier's view of this box could change what we say about it.

    Not for people (the classifier has no "person"), boxes too weak to name, boxes covering most
    of the photo (scikit-image's chelsea), nor a box the whole photo's tags already confirm under
    its own name (the motorcycle, the cup of espresso) unless other boxes share its label (``shared``:
    each is counted only where its own crop agrees): each crop is one more classifier pass.
    """
    noun = COCO_NOUNS.get(detection.label, (detection.label, "object"))[0]
    weak = detection.score < class_threshold(detection.label)
    if noun == "person" or weak or detection.box.area >= WHOLE_IMAGE:
        return False
    if shared:
        return True
    confirmed = weigh_object(detection, whole)
    return confirmed is None or not confirmed.sure or confirmed.noun != noun


def crop(image: Image.Image, detection: Detection) -> Image.Image:
    """The detection's box with a margin of context, in pixels of ``image``."""
    box, w, h = detection.box, image.width, image.height
    mx, my = (box.x2 - box.x1) * CROP_MARGIN, (box.y2 - box.y1) * CROP_MARGIN
    left, top = max(0, int((box.x1 - mx) * w)), max(0, int((box.y1 - my) * h))
    right, bottom = min(w, int((box.x2 + mx) * w) + 1), min(h, int((box.y2 + my) * h) + 1)
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


class SceneDescriber(Describer):
    """Detectors, classifier and OCR, each loaded once; ``describe_full`` runs them photo by photo."""

    def __init__(
        self, classifier: BuiltinDescriber, detectors: Detectors, missing: Mapping[str, str]
    ) -> None:
        self.classifier = classifier
        self.detectors = detectors
        self.missing = tuple(missing)
        self.components = (
            *(c for c, (slot, _) in LOADERS.items() if getattr(detectors, slot) is not None),
            CLASSIFIER,
            *(("rapidocr",) if classifier.reader is not None else ()),
        )
        self.name = f"builtin:scene({','.join(self.components)})"

    @classmethod
    def load(cls, models_dir: Path, ocr: str = "auto", device: str = "cpu") -> SceneDescriber:
        """Load everything there is, once per worker; one log line names what is left out and why."""
        classifier = BuiltinDescriber.load(CLASSIFIER, ocr=ocr, device=device)
        detectors, missing = load_detectors(models_dir)
        describer = cls(classifier, detectors, missing)
        if missing:
            reasons = "; ".join(f"{name}: {why}" for name, why in missing.items())
            log.warning(
                "scene describer running without %s (%s); run `imgsvc fetch-models` to fetch the weights "
                "into MODELS_DIR=%s. Running: %s",
                ", ".join(missing),
                reasons,
                models_dir,
                ", ".join(describer.components),
            )
        return describer

    def describe_full(
        self, images: Sequence[Image.Image], options: Mapping[str, Any] | None = None
    ) -> list[Description]:
        self.check_options(options)
        if not images:
            return []
        rgb = [image.convert("RGB") for image in images]
        evidence = self.gather(rgb)
        results = []
        for item in evidence:
            scene = read_scene(item)
            people = None
            if self.detectors.person is not None or self.detectors.objects is not None:
                people = People(count=len(scene.people), faces=scene.faces, smiling=scene.smiling)
            results.append(
                Description(
                    text=compose_scene(scene),
                    tags=list(item.tags),
                    lines=None if item.lines is None else list(item.lines),
                    objects=scene.objects,
                    people=people,
                )
            )
        return results

    def gather(self, images: list[Image.Image]) -> list[Evidence]:
        """Every model's raw output, one :class:`Evidence` per image.

        One photo at a time, through every model: on CPU a batch costs more per photo than single
        photos (a batch of six, 2026-12-06: 1.3x the wall time), its larger activations only adding
        memory traffic, so a batch of N is N single photos and never costs more per photo.
        """
        return [self.look(image) for image in images]

    def look(self, image: Image.Image) -> Evidence:
        """One photo's evidence, skipping the models that cannot change its sentence: the person
        detector where CenterNet sees no hint of a person (:data:`PERSON_HINT`), faces and their
        emotions where nobody was found (a face counts only inside a person)."""
        d = self.detectors
        # Without CenterNet there is no hint: the person detector always runs.
        objects, hint = d.objects.scan(image) if d.objects is not None else ([], 1.0)
        people: list[Detection] | None = None
        if d.person is not None:
            people = d.person.detect([image])[0] if hint >= PERSON_HINT else []
        persons = merge_people(Evidence(people=people, objects=objects))
        found = d.faces.detect([image])[0] if d.faces is not None and persons else []

        # The classifier on the whole photo, then on the crops that are worth a second opinion.
        (wide_tags,), features = self.classifier.classify_with_features([image], k=KIND_TAGS)
        tags = wide_tags[:TOP_K]
        drawing = bool((drawing_scores(features) >= DRAWING_SCORE)[0])
        painting = bool((painting_scores(features) >= PAINTING_SCORE)[0])
        labels = Counter(o.label for o in objects)
        wanted = [i for i, o in enumerate(objects) if needs_crop(o, tags, labels[o.label] > 1)][:MAX_CROPS]
        crop_tags = iter(
            self.classifier.classify([crop(image, objects[i]) for i in wanted]) if wanted else []
        )
        lines = self.classifier.read_text(image, tags)
        evidence = Evidence(
            people=people,
            objects=objects,
            object_tags=[next(crop_tags) if i in wanted else tags for i in range(len(objects))],
            faces=self._faces_with_emotions(image, persons, found),
            tags=tags,
            wide_tags=wide_tags,
            lines=lines,
            greyscale=is_greyscale(image),
            page=looks_like_page(image) if lines else None,
            drawing=drawing,
            painting=painting,
            small=min(image.size) < SMALL_IMAGE,
        )
        return self._look_at_surfaces(image, self._read_signs(image, evidence))

    def _read_signs(self, image: Image.Image, item: Evidence) -> Evidence:
        """OCR after all where the scene would name nothing else (a sign with a word or two)."""
        if self.classifier.reader is None or not wants_second_read(read_scene(item)):
            return item
        found = sign_lines(self.classifier.reader.read(image))
        return replace(item, lines=found, page=looks_like_page(image) if found else None)

    def _look_at_surfaces(self, image: Image.Image, item: Evidence) -> Evidence:
        """The sky and grass (:mod:`~imgsvc.vision.scene.surfaces`) where the sentence would name
        nobody, nothing and no words: what is left to say is what the photo is a view of."""
        scene = read_scene(item)
        if scene.people or scene.things or sign_lines(scene.lines or ()) or scene.drawing or scene.painting:
            return item
        return replace(item, surfaces=surfaces(image, item.wide_tags or item.tags))

    def _faces_with_emotions(
        self, image: Image.Image, persons: list[Detection], detections: list[Detection]
    ) -> list[Face]:
        """Faces as :class:`Face`; the emotion model runs only on those inside a person (one batch)."""
        faces = [Face(score=d.score, box=d.box) for d in detections]
        if self.detectors.emotion is None:
            return faces
        inner = [i for i, f in enumerate(faces) if any(inside(f.box, p.box) >= FACE_INSIDE for p in persons)][
            :MAX_FACES
        ]
        verdicts = self.detectors.emotion.classify(image, [faces[i].box for i in inner]) if inner else []
        for i, (emotion, score) in zip(inner, verdicts, strict=True):
            faces[i] = Face(faces[i].score, faces[i].box, emotion, round(score, 4))
        return faces
