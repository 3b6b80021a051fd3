"""The four detectors on real weights and real photos, against the original frameworks' numbers.

``tests/fixtures/detector_reference.json`` holds what TensorFlow (the SSD frozen graph) and TF.js
(the three TF.js graph models) computed for the very same input pixels; it was recorded once by
``tests/fixtures/record_detector_reference.py`` in a throwaway environment.

Tolerances: float32 results that differ only in summation order (oneDNN here, Eigen or TF.js's JS
loops there) agree to about 1e-5 on these outputs (measured: logits within 1.3e-5, CenterNet box
corners within 3e-4 of a 512-pixel input). We allow 100x that, 1e-3 on logits and probabilities and
0.05 pixel on box corners, so another CPU or BLAS passes, while a wrong padding, a mis-folded batch
norm or a swapped weight layout moves them by 0.1 or more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sample_photos import PHOTOS, photo

from imgsvc.vision.base import Box, Detection, ModelLoadError
from imgsvc.vision.graphs.compiler import compile_graph
from imgsvc.vision.graphs.graphdef import load_graphdef
from imgsvc.vision.scene.blazeface import FaceDetector
from imgsvc.vision.scene.boxes import nms
from imgsvc.vision.scene.centernet import CLASS_THRESHOLDS, SCORE_THRESHOLD, ObjectDetector, decode
from imgsvc.vision.scene.emotion import EmotionClassifier, face_crops
from imgsvc.vision.scene.ssd_person import GRAPH_FILE, NMS_IOU, PersonDetector, decode_boxes, ssd_anchors

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "detector_reference.json").read_text())
LOGIT_TOLERANCE = 1e-3
PIXEL_TOLERANCE = 0.05
NO_PEOPLE = ["chelsea", "coffee", "motorcycle", "horse", "rocket", "moon"]


@pytest.fixture(scope="module")
def person_detector(models_dir: Path) -> PersonDetector:
    return PersonDetector.load(models_dir)


@pytest.fixture(scope="module")
def object_detector(models_dir: Path) -> ObjectDetector:
    return ObjectDetector.load(models_dir)


@pytest.fixture(scope="module")
def face_detector(models_dir: Path) -> FaceDetector:
    return FaceDetector.load(models_dir)


@pytest.fixture(scope="module")
def emotion_classifier(models_dir: Path) -> EmotionClassifier:
    return EmotionClassifier.load(models_dir)


def assert_summary(values: torch.Tensor, reference: dict[str, float], tolerance: float) -> None:
    values = values.double()
    mine = {
        "mean": values.mean(),
        "std": values.std(unbiased=False),
        "min": values.min(),
        "max": values.max(),
    }
    for key, expected in reference.items():
        # rel: a few float32 steps, for extremes far from zero (BlazeFace's min logit is about -11,000,
        # where one float32 step is 0.001 and the order of a sum moves it by two).
        assert float(mine[key]) == pytest.approx(expected, abs=tolerance, rel=1e-6), key


def labels(detections: list[Detection]) -> list[str]:
    return [d.label for d in detections]


# --- SSDLite person detector (TensorFlow frozen graph)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_ssd_raw_outputs_match_tensorflow(person_detector: PersonDetector, name: str) -> None:
    reference = REFERENCE["ssd"][name]
    encodings, probabilities = person_detector.raw([photo(name)])
    encodings, logits = encodings[0], torch.logit(probabilities[0].double())
    assert_summary(encodings, reference["box_encodings"], LOGIT_TOLERANCE)
    top = reference["top_anchors"]
    torch.testing.assert_close(
        logits[top],
        torch.tensor(reference["top_person_logits"], dtype=torch.float64),
        atol=LOGIT_TOLERANCE,
        rtol=0,
    )
    torch.testing.assert_close(
        encodings[top], torch.tensor(reference["top_box_encodings"]), atol=LOGIT_TOLERANCE, rtol=0
    )


def test_ssd_anchors_match_the_graphs_own_anchor_generator(models_dir: Path) -> None:
    """Our anchors vs the graph's MultipleGridAnchorGenerator, run by our executor and by TF."""
    graph = load_graphdef(models_dir / GRAPH_FILE)
    (from_graph,) = compile_graph(graph, [], ["Concatenate/concat"])()
    ours = ssd_anchors()
    corners = torch.cat(
        [ours[:, :2] - ours[:, 2:] / 2, ours[:, :2] + ours[:, 2:] / 2], dim=1
    )  # ymin, xmin, ...
    assert corners.shape == (1917, 4)
    torch.testing.assert_close(corners, from_graph, atol=1e-6, rtol=0)
    for index, row in REFERENCE["ssd"]["anchors"]["rows"].items():
        torch.testing.assert_close(corners[int(index)], torch.tensor(row), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["astronaut", "camera", "two_astronauts", "coffee"])
def test_ssd_decoding_matches_tensorflows_post_processing(person_detector: PersonDetector, name: str) -> None:
    """Anchors + box coder + NMS of ours give TF's own detection_boxes/scores (score >= 0.3)."""
    encodings, probabilities = person_detector.raw([photo(name)])
    keep = probabilities[0] >= 0.3
    boxes = decode_boxes(encodings[0][keep], person_detector.anchors[keep]).clamp(0, 1)
    scores = probabilities[0][keep]
    kept = nms(boxes, scores, NMS_IOU)
    expected = torch.tensor(REFERENCE["ssd"][name]["tf_detections"]).reshape(-1, 5)
    assert len(kept) == len(expected)
    torch.testing.assert_close(scores[kept], expected[:, 0], atol=1e-4, rtol=0)
    # TF gives (ymin, xmin, ymax, xmax); ours are (x1, y1, x2, y2).
    torch.testing.assert_close(boxes[kept], expected[:, [2, 1, 4, 3]], atol=1e-4, rtol=0)


def test_person_detector_finds_the_people_in_photos(person_detector: PersonDetector) -> None:
    names = ["astronaut", "camera", "two_astronauts", "three_astronauts", *NO_PEOPLE]
    found = dict(zip(names, person_detector.detect([photo(n) for n in names]), strict=True))
    assert [d.score > 0.9 for d in found["astronaut"]] == [True]
    assert [d.score > 0.95 for d in found["camera"]] == [True]
    for name in NO_PEOPLE:
        assert found[name] == [], name
    # The composites: one person per astronaut, left to right, nobody counted twice.
    for name, count in (("two_astronauts", 2), ("three_astronauts", 3)):
        centres = sorted(d.box.center[0] for d in found[name])
        assert len(centres) == count, name
        assert [int(x * count) for x in centres] == list(range(count)), name


def test_person_boxes_are_normalised_to_the_photo(person_detector: PersonDetector) -> None:
    (astronaut,) = person_detector.detect([photo("astronaut")])[0]
    box = astronaut.box
    assert 0 <= box.x1 < 0.1 and 0.6 < box.x2 <= 0.8 and 0 < box.y1 < 0.15 and box.y2 > 0.95


# --- CenterNet object detector (TF.js graph model)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_centernet_heads_and_decoder_match_tfjs(object_detector: ObjectDetector, name: str) -> None:
    reference = REFERENCE["centernet"][name]
    heatmap, sizes = object_detector.raw([photo(name)])
    assert_summary(heatmap, reference["keypoints"], LOGIT_TOLERANCE)
    assert_summary(sizes, reference["wh"], PIXEL_TOLERANCE)
    flat = heatmap.reshape(-1)
    torch.testing.assert_close(
        flat[reference["top_indices"]], torch.tensor(reference["top_values"]), atol=1e-4, rtol=0
    )
    # Our batched decoder vs the graph's own tail (peaks, top 100, boxes) as TF.js ran it.
    decoded = decode(heatmap, sizes)[0][:20]
    expected = torch.tensor(reference["detections"])
    torch.testing.assert_close(decoded[:, :4], expected[:, :4], atol=PIXEL_TOLERANCE, rtol=0)
    torch.testing.assert_close(decoded[:, 4], expected[:, 4], atol=1e-4, rtol=0)
    assert decoded[:, 5].tolist() == expected[:, 5].tolist()


def test_object_detector_names_what_is_in_photos(object_detector: ObjectDetector) -> None:
    names = ["astronaut", "camera", "chelsea", "coffee", "motorcycle", "horse", "rocket", "two_astronauts"]
    found = dict(zip(names, object_detector.detect([photo(n) for n in names]), strict=True))
    assert labels(found["astronaut"]) == ["person"]
    assert labels(found["camera"]) == ["person"]
    assert labels(found["chelsea"]) == ["cat"]  # squeezed instead of letterboxed it said "dog"
    assert "cup" in labels(found["coffee"])
    assert labels(found["motorcycle"]) == ["motorcycle"]
    assert labels(found["horse"]) == ["horse"]
    assert found["rocket"] == []
    # Letterboxed, the 2:1 composite keeps both people (squeezed, it found nobody).
    people = sorted((d.box for d in found["two_astronauts"] if d.label == "person"), key=lambda b: b.x1)
    assert len(people) == 2 and people[0].center[0] < 0.5 < people[1].center[0]
    assert all(box.y2 > 0.9 for box in people)  # boxes mapped back from the padded square to the photo
    (astronaut,) = found["astronaut"]
    assert astronaut.box.x1 < 0.1 and 0.6 < astronaut.box.x2 < 0.8 and astronaut.box.y2 > 0.95
    for detections in found.values():
        assert all(d.score >= min(SCORE_THRESHOLD, CLASS_THRESHOLDS.get(d.label, 1.0)) for d in detections)
        assert all(0 <= v <= 1 for d in detections for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2))


def test_a_class_with_a_lower_threshold_is_reported_from_it_and_no_other() -> None:
    """A heat map with a "sports ball" and a "kite" peak at 0.25: only the ball is reported."""
    labels = ObjectDetector(lambda batch: None).labels  # type: ignore[arg-type]
    ball, kite = labels.index("sports ball"), labels.index("kite")
    assert CLASS_THRESHOLDS["sports ball"] <= 0.25 < SCORE_THRESHOLD

    def heads(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heatmap = torch.zeros(len(batch), 128, 128, 80)
        heatmap[:, 40, 40, ball] = 0.25
        heatmap[:, 90, 90, kite] = 0.25
        return heatmap, torch.full((len(batch), 128, 128, 4), 8.0)

    (found,) = ObjectDetector(heads).detect([photo("chelsea")])  # type: ignore[arg-type]
    assert [(d.label, round(d.score, 2)) for d in found] == [("sports ball", 0.25)]


# --- BlazeFace (TF.js graph model)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_blazeface_outputs_match_tfjs(face_detector: FaceDetector, name: str) -> None:
    reference = REFERENCE["blazeface"][name]
    logits, regressors = face_detector.raw([photo(name)])
    assert_summary(logits[0], reference["logits"], LOGIT_TOLERANCE)
    assert_summary(regressors[0], reference["regressors"], PIXEL_TOLERANCE)
    top = reference["top_anchors"]
    torch.testing.assert_close(
        logits[0][top], torch.tensor(reference["top_logits"]), atol=LOGIT_TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        regressors[0][top, :4], torch.tensor(reference["top_boxes"]), atol=PIXEL_TOLERANCE, rtol=0
    )


def test_face_detector_finds_faces(face_detector: FaceDetector) -> None:
    names = [
        "astronaut",
        "camera",
        "two_astronauts",
        "three_astronauts",
        "motorcycle",
        "horse",
        "rocket",
        "moon",
    ]
    found = dict(zip(names, face_detector.detect([photo(n) for n in names]), strict=True))
    (astronaut,) = found["astronaut"]
    assert astronaut.label == "face" and astronaut.score == pytest.approx(0.88, abs=0.02)
    # Her face: upper middle of the photo.
    assert 0.3 < astronaut.box.x1 < astronaut.box.x2 < 0.6 and 0.1 < astronaut.box.y1 < astronaut.box.y2 < 0.4
    assert [round(d.score, 2) for d in found["camera"]] == [0.77]
    assert len(found["two_astronauts"]) == 2 and len(found["three_astronauts"]) == 3
    for name in ("motorcycle", "horse", "rocket", "moon"):
        assert found[name] == [], name


# --- Emotion (TF.js graph model)


@pytest.mark.parametrize("name", sorted(REFERENCE["emotion"]))
def test_emotion_probabilities_match_tfjs(emotion_classifier: EmotionClassifier, name: str) -> None:
    reference = REFERENCE["emotion"][name]
    probabilities = emotion_classifier.probabilities(face_crops(photo(name), [Box(*reference["box"])]))
    torch.testing.assert_close(probabilities[0], torch.tensor(reference["probabilities"]), atol=1e-4, rtol=0)


def test_the_astronaut_smiles(face_detector: FaceDetector, emotion_classifier: EmotionClassifier) -> None:
    image = photo("two_astronauts")
    faces = face_detector.detect([image])[0]
    verdicts = emotion_classifier.classify(image, [f.box for f in faces])
    assert [label for label, _ in verdicts] == ["happy", "happy"]
    assert all(p > 0.99 for _, p in verdicts)
    assert emotion_classifier.classify(image, []) == []


# --- Shared behaviour


def test_a_batch_gives_what_each_image_gives_alone(
    person_detector: PersonDetector, object_detector: ObjectDetector, face_detector: FaceDetector
) -> None:
    """Batching must not change results: the TF.js graphs were exported for batch 1."""
    images = [photo("astronaut"), photo("coffee"), photo("two_astronauts")]
    for detector in (person_detector, object_detector, face_detector):
        together = detector.detect(images)
        alone = [detector.detect([image])[0] for image in images]
        assert [labels(d) for d in together] == [labels(d) for d in alone]
        for batch, single in zip(together, alone, strict=True):
            for a, b in zip(batch, single, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-4)
                assert a.box.x1 == pytest.approx(b.box.x1, abs=1e-4)
        assert detector.detect([]) == []


@pytest.mark.parametrize(
    ("loader", "missing"),
    [
        (PersonDetector.load, "frozen_inference_graph.pb"),
        (ObjectDetector.load, "centernet.json"),
        (FaceDetector.load, "blazeface.json"),
        (EmotionClassifier.load, "emotion.json"),
    ],
)
def test_missing_weights_say_which_file_and_how_to_get_it(tmp_path: Path, loader, missing: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"{missing}.*imgsvc fetch-models"):
        loader(tmp_path)
