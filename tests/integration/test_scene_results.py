"""Objects and people in results: stored by the worker, answered by the API, copied by dedupe,
and a database made by an older imgsvc upgraded in place (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, event, inspect, text

from imgsvc import create_app
from imgsvc.storage import jobs
from imgsvc.storage.db import SchemaUpgradeError, add_missing_columns, create_or_upgrade, db
from tests.conftest import image_bytes
from tests.integration.scene_double import NAME, FixedSceneDescriber
from tests.integration.test_api import submit

# What the API must answer for the double's scene, written out by hand: rounded, normalised, plain JSON.
EXPECTED_OBJECTS = [
    {"label": "person", "score": 0.9512, "box": {"x1": 0.02, "y1": 0.015, "x2": 0.352, "y2": 0.5}},
    {"label": "person", "score": 0.8731, "box": {"x1": 0.5, "y1": 0.063, "x2": 0.81, "y2": 0.5}},
    {"label": "cup", "score": 0.4712, "box": {"x1": 0.088, "y1": 0.522, "x2": 0.39, "y2": 0.884}},
    {"label": "motorcycle", "score": 0.49, "box": {"x1": 0.5, "y1": 0.586, "x2": 1.0, "y2": 0.952}},
]
EXPECTED_PEOPLE = {
    "count": 2,
    "faces": [
        {
            "score": 0.88,
            "box": {"x1": 0.161, "y1": 0.039, "x2": 0.283, "y2": 0.186},
            "emotion": "happy",
            "emotion_score": 0.9987,
        },
        {
            "score": 0.7712,
            "box": {"x1": 0.674, "y1": 0.088, "x2": 0.762, "y2": 0.195},
            "emotion": "neutral",
            "emotion_score": 0.61,
        },
    ],
    "smiling": 1,
}


@pytest.fixture()
def scene_describer() -> FixedSceneDescriber:
    return FixedSceneDescriber()


def test_result_carries_objects_and_people(client, run_worker, scene_describer):
    job_id = submit(client, image_bytes("JPEG")).get_json()["job_id"]
    run_worker(scene_describer)
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["generated_by"] == scene_describer.name
    assert result["objects"] == EXPECTED_OBJECTS
    assert result["people"] == EXPECTED_PEOPLE


def test_identical_image_gets_the_same_objects_and_people_from_the_cache(client, run_worker, scene_describer):
    first = submit(client, image_bytes("PNG")).get_json()["job_id"]
    run_worker(scene_describer)
    again = submit(client, image_bytes("PNG")).get_json()
    assert again["cached"] is True
    cached = client.get(f"/api/v1/result/{again['job_id']}").get_json()
    original = client.get(f"/api/v1/result/{first}").get_json()
    for field in ("image_description", "generated_by", "tags", "text", "objects", "people"):
        assert cached[field] == original[field], field
    assert cached["objects"] == EXPECTED_OBJECTS


def test_batch_results_carry_objects_and_people(client, run_worker, scene_describer):
    batch = client.post(
        "/api/v1/batch",
        data={"file": [(io.BytesIO(image_bytes(fmt)), f"a.{fmt}") for fmt in ("JPEG", "PNG")]},
        content_type="multipart/form-data",
    ).get_json()
    run_worker(scene_describer)
    members = client.get(f"/api/v1/batch/{batch['batch_id']}").get_json()["jobs"]
    assert [m["people"]["count"] for m in members] == [2, 2]
    assert all(m["objects"] == EXPECTED_OBJECTS for m in members)


def test_a_captioner_gives_null_objects_and_people(client, run_worker):
    job_id = submit(client, image_bytes("JPEG")).get_json()["job_id"]
    run_worker()  # the tiny BLIP
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["objects"] is None and result["people"] is None


def test_describe_json_prints_objects_and_people(tmp_path, monkeypatch):
    from imgsvc import cli

    photo = tmp_path / "p.png"
    photo.write_bytes(image_bytes("PNG"))
    monkeypatch.setattr("imgsvc.vision.load_describer", lambda settings: FixedSceneDescriber())
    result = CliRunner().invoke(cli.main, ["describe", "--json", str(photo)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["objects"] == EXPECTED_OBJECTS and record["people"] == EXPECTED_PEOPLE
    assert record["generated_by"] == NAME


# -- upgrading a database made by an older imgsvc ------------------------------------------
#: Columns this version added to ``jobs``; an older database lacks them.
NEW_COLUMNS = {"objects", "people"}


def create_old_jobs_table(url: str) -> None:
    """The ``jobs`` table as the previous release created it, with one finished job in it."""
    engine = create_engine(url)
    old = MetaData()
    Table("jobs", old, *(c.copy() for c in jobs.Job.__table__.columns if c.name not in NEW_COLUMNS))
    old.drop_all(engine)
    old.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, status, image_format, width, height, size_bytes, sha256, created_at,"
                " updated_at, completed_at, attempts, description, generated_by, cached)"
                " VALUES ('11111111-1111-4111-8111-111111111111', 'done', 'JPEG', 64, 48, 100, 'ab',"
                " '2026-01-02 03:04:05', '2026-01-02 03:04:06', '2026-01-02 03:04:06', 1,"
                " 'A photo of an old cat.', 'builtin:efficientnet-lite0', false)"
            )
        )
    engine.dispose()


def upgrade_and_use(settings, database_url: str, scene_describer) -> None:
    """Start the app on the old database: old rows still answer, new jobs store objects and people."""
    app = create_app(settings.with_(database_url=database_url))
    client = app.test_client()
    try:
        with app.app_context():
            assert {c["name"] for c in inspect(db.engine).get_columns("jobs")} >= NEW_COLUMNS
        old = client.get("/api/v1/result/11111111-1111-4111-8111-111111111111").get_json()
        assert old["image_description"] == "A photo of an old cat."
        assert old["objects"] is None and old["people"] is None
        job_id = submit(client, image_bytes("JPEG")).get_json()["job_id"]
        from imgsvc.queue.worker import ImgsvcWorker

        ImgsvcWorker([app.task_queue], connection=app.redis, app=app, describer=scene_describer).work(
            burst=True
        )
        assert client.get(f"/api/v1/result/{job_id}").get_json()["people"] == EXPECTED_PEOPLE
        with app.app_context():
            assert create_or_upgrade() == []  # the next start finds nothing to do
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_an_older_sqlite_database_is_upgraded_in_place(settings, tmp_path, scene_describer):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    create_old_jobs_table(url)
    upgrade_and_use(settings, url, scene_describer)


def test_an_older_postgresql_database_is_upgraded_in_place(settings, scene_describer, postgres_url):
    create_old_jobs_table(postgres_url)
    upgrade_and_use(settings, postgres_url, scene_describer)


# -- the general mechanism, on a table that is not ``jobs`` ------------------------------------
def widgets(*extra: Column) -> MetaData:
    metadata = MetaData()
    Table("widgets", metadata, Column("id", Integer, primary_key=True), Column("name", String(20)), *extra)
    return metadata


def test_any_missing_nullable_column_is_added_with_its_index(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    widgets().create_all(engine)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO widgets (id, name) VALUES (1, 'old')"))
    newer = widgets(Column("colour", String(10), index=True), Column("weight", Integer))

    assert add_missing_columns(engine, newer) == ["widgets.colour", "widgets.weight"]
    assert add_missing_columns(engine, newer) == []
    assert "ix_widgets_colour" in {ix["name"] for ix in inspect(engine).get_indexes("widgets")}
    with engine.connect() as connection:
        assert connection.execute(text("SELECT name, colour, weight FROM widgets")).one() == (
            "old",
            None,
            None,
        )
    engine.dispose()


def test_a_column_that_cannot_be_added_is_refused_by_name(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    widgets().create_all(engine)
    with pytest.raises(SchemaUpgradeError, match="widgets lacks column size"):
        add_missing_columns(engine, widgets(Column("size", Integer, nullable=False)))
    engine.dispose()


def test_a_column_another_process_added_first_is_skipped(tmp_path):
    """Two processes starting at once both see the column missing; the slower one must not fail."""
    path = tmp_path / "w.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    widgets().create_all(engine)

    @event.listens_for(engine, "before_cursor_execute")
    def the_other_process_wins(conn, cursor, statement, *args):
        if statement.startswith("ALTER TABLE"):  # just before ours runs, another process adds it
            with sqlite3.connect(path) as other:
                other.execute("ALTER TABLE widgets ADD COLUMN colour VARCHAR(10)")

    assert add_missing_columns(engine, widgets(Column("colour", String(10)))) == []
    assert "colour" in {c["name"] for c in inspect(engine).get_columns("widgets")}
    engine.dispose()


def test_numpy_scores_and_boxes_past_the_edges_are_stored_as_plain_rounded_numbers(client, run_worker):
    from imgsvc.vision.base import Box, Detection

    describer = FixedSceneDescriber(
        objects=[Detection("dog", np.float32(0.123456), Box(np.float32(-0.01), 0.2, 1.00002, 0.333333))]
    )
    job_id = submit(client, image_bytes("JPEG")).get_json()["job_id"]
    run_worker(describer)
    (dog,) = client.get(f"/api/v1/result/{job_id}").get_json()["objects"]
    assert dog == {"label": "dog", "score": 0.1235, "box": {"x1": 0.0, "y1": 0.2, "x2": 1.0, "y2": 0.3333}}
