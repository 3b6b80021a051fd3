"""The result of a described image, defined once: every place that shows a result builds it here.

:class:`JobResult` is what ``GET /api/v1/result``, the batch status and the webhook body send
(``Job.result_dict``); its description fields come from :class:`Findings`, which
``vision/records.py`` makes of a :class:`Description`, and ``imgsvc describe --json`` prints the
same fields through :func:`described`. The OpenAPI spec's ``JobResult`` schema and the web
page's reads are checked against these classes (``tests/core/test_results.py``): a new result
field starts here, then goes into ``web/openapi.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from imgsvc.vision.base import Description
from imgsvc.vision.records import description_record


@dataclass(frozen=True)
class Findings:
    """What a model found besides its sentence; ``None`` where it has nothing to say about it."""

    tags: list[dict[str, Any]] | None
    text: list[dict[str, Any]] | None
    objects: list[dict[str, Any]] | None
    people: dict[str, Any] | None

    @classmethod
    def of(cls, description: Description) -> Findings:
        return cls(**description_record(description))


@dataclass(frozen=True)
class ImageSummary:
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class JobResult:
    """A done job as clients see it; the field order is the JSON's order."""

    job_id: str
    status: Literal["done"]
    filename: str | None
    image_description: str | None
    generated_by: str | None
    created_at: str
    completed_at: str
    tags: list[dict[str, Any]] | None
    text: list[dict[str, Any]] | None
    objects: list[dict[str, Any]] | None
    people: dict[str, Any] | None
    cached: bool
    #: Which attempt of the job this is: 1, then one more per POST /jobs/<id>/retry.
    attempt: int
    options: dict[str, Any]
    image: ImageSummary

    def to_json(self) -> dict[str, Any]:
        """A plain dict, built by hand: ``dataclasses.asdict`` deep-copies every tag and box."""
        body = {name: getattr(self, name) for name in JOB_RESULT_FIELDS}
        body["image"] = {name: getattr(self.image, name) for name in IMAGE_FIELDS}
        return body


JOB_RESULT_FIELDS = tuple(f.name for f in fields(JobResult))
IMAGE_FIELDS = tuple(f.name for f in fields(ImageSummary))
FINDINGS_FIELDS = tuple(f.name for f in fields(Findings))


def described(description: Description, generated_by: str) -> dict[str, Any]:
    """The fields of a :class:`JobResult` that one description fills, under the same names."""
    findings = Findings.of(description)
    return {
        "image_description": description.text,
        "generated_by": generated_by,
        **{name: getattr(findings, name) for name in FINDINGS_FIELDS},
    }
