"""The result's one shape (imgsvc/results.py) against everything that shows it: the OpenAPI spec,
the web page's script and the CLI's ``describe --json``. A field added to one and not the others
fails here, by name."""

from __future__ import annotations

import re
import types
import typing
from importlib.resources import files
from typing import Any

from imgsvc.results import IMAGE_FIELDS, JOB_RESULT_FIELDS, ImageSummary, JobResult, described
from imgsvc.vision.base import Description, Tag
from imgsvc.web.docs import openapi_spec

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def schema_types(schema: dict[str, Any], spec: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows, following ``$ref`` and ``oneOf``."""
    if "$ref" in schema:
        return schema_types(resolve(schema["$ref"], spec), spec)
    if "oneOf" in schema:
        return set().union(*(schema_types(option, spec) for option in schema["oneOf"]))
    if "const" in schema:
        return {JSON_TYPES[type(schema["const"])]}
    kind = schema["type"]
    return set(kind) if isinstance(kind, list) else {kind}


def resolve(ref: str, spec: dict[str, Any]) -> dict[str, Any]:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def python_types(annotation: Any) -> set[str]:
    """The JSON types a dataclass field's annotation serialises to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(python_types(arg) for arg in typing.get_args(annotation)))
    if annotation is type(None):
        return {"null"}
    if typing.get_origin(annotation) is typing.Literal:
        return {JSON_TYPES[type(value)] for value in typing.get_args(annotation)}
    if annotation is ImageSummary:
        return {"object"}
    return {JSON_TYPES[typing.get_origin(annotation) or annotation]}


def check_agrees(schema: dict[str, Any], cls: type, names: tuple[str, ...], spec: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    assert list(schema["properties"]) == list(names)  # same fields, in the JSON's order
    assert set(schema["required"]) == set(names)  # to_json always writes every field
    for name in names:
        assert schema_types(schema["properties"][name], spec) == python_types(hints[name]), name


def test_openapi_job_result_agrees_with_the_serializer_field_by_field():
    spec = openapi_spec()
    schema = spec["components"]["schemas"]["JobResult"]
    check_agrees(schema, JobResult, JOB_RESULT_FIELDS, spec)
    image = schema["properties"]["image"]  # a named schema (ImageInfo), for generated clients
    check_agrees(resolve(image["$ref"], spec) if "$ref" in image else image, ImageSummary, IMAGE_FIELDS, spec)
    assert (
        schema["properties"]["status"]["const"]
        == typing.get_args(typing.get_type_hints(JobResult)["status"])[0]
    )


def test_the_web_page_reads_only_fields_a_result_has():
    script = files("imgsvc.web").joinpath("static/app.js").read_text(encoding="utf-8")
    people = openapi_spec()["components"]["schemas"]["People"]["properties"]

    read = set(re.findall(r"\bresult\.([a-z_]+)", script))
    read_of_people = set(re.findall(r"\bresult\.people\.([a-z_]+)", script))

    assert read, "the page no longer reads results as `result.<field>`: update this test's pattern"
    assert read <= set(JOB_RESULT_FIELDS)
    assert read_of_people <= set(people)


def test_cli_json_uses_the_results_field_names():
    record = described(Description("a cat", tags=[Tag("cat", 0.98765)]), "tiny")

    assert set(record) <= set(JOB_RESULT_FIELDS)
    assert record == {
        "image_description": "a cat",
        "generated_by": "tiny",
        "tags": [{"label": "cat", "score": 0.98765}],
        "text": None,
        "objects": None,
        "people": None,
    }
