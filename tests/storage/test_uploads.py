"""Both upload stores keep one contract: stream, limit, hash, name, hand back, delete, list for the sweep.

The object store runs against a real S3 server (SeaweedFS on loopback), never a mock.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgsvc.config import ConfigError, Settings
from imgsvc.errors import EmptyFile, FileTooLarge, StorageUnavailable
from imgsvc.storage.s3 import S3UploadStore
from imgsvc.storage.stores import open_upload_store
from imgsvc.storage.uploads import LocalUploadStore, UploadStore, client_filename, trim_staged
from tests.integration.procs import free_port

FAR_FUTURE = datetime.now(UTC) + timedelta(days=1)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> UploadStore:
    if request.param == "local":
        return LocalUploadStore(tmp_path / "uploads", max_bytes=1000)
    (tmp_path / "staging").mkdir()
    return S3UploadStore(
        request.getfixturevalue("s3_upload_dir"), max_bytes=1000, staging_dir=tmp_path / "staging"
    )


def stored(store: UploadStore) -> set[str]:
    return set(store.names_older_than(FAR_FUTURE))


def leftovers(store: UploadStore) -> list[str]:
    """Temp files of staging or downloading: none may outlive the call that made them."""
    return [p.name for p in store.staging_dir.iterdir() if p.name.startswith(".")]


def test_stage_commit_and_read_back_under_server_names(store):
    staged = store.stage(io.BytesIO(b"x" * 999))
    assert staged.size == 999 and staged.sha256 == hashlib.sha256(b"x" * 999).hexdigest()
    name = store.commit(staged, ".png")
    assert name.endswith(".png") and len(name) == 36
    assert stored(store) == {name} and leftovers(store) == []
    with store.local_copy(name) as path:
        assert path.read_bytes() == b"x" * 999
    assert leftovers(store) == []  # the object store's download is removed after use


def test_a_staged_upload_is_cut_at_the_image_s_end_and_hashed_again(store):
    staged = store.stage(io.BytesIO(b"image" + b"PADDING-1" * 100))
    trimmed = trim_staged(staged, 5)
    assert (trimmed.path, trimmed.size, trimmed.sha256) == (
        staged.path,
        5,
        hashlib.sha256(b"image").hexdigest(),
    )
    assert trimmed.path.read_bytes() == b"image"
    assert trim_staged(trimmed, 5) is trimmed and trim_staged(trimmed, None) is trimmed  # nothing follows
    name = store.commit(trimmed, ".jpg")
    with store.local_copy(name) as path:
        assert path.read_bytes() == b"image"
    assert leftovers(store) == []


@pytest.mark.parametrize(("data", "error"), [(b"", EmptyFile), (b"y" * 1001, FileTooLarge)])
def test_rejected_uploads_leave_no_file(store, data, error):
    with pytest.raises(error):
        store.stage(io.BytesIO(data))
    assert stored(store) == set() and leftovers(store) == []


def test_delete_is_idempotent_and_a_deleted_upload_is_missing(store):
    name = store.commit(store.stage(io.BytesIO(b"img")), ".jpg")
    store.delete(name)
    store.delete(name)
    store.delete(None)  # a cached job has no file of its own
    assert stored(store) == set()
    with pytest.raises(FileNotFoundError), store.local_copy(name) as path:
        path.read_bytes()  # the local store hands out the path; reading it finds nothing
    assert leftovers(store) == []


def test_foreign_names_are_refused(store):
    for bad in ("../etc/passwd", ".hidden", "a/b.png", "notes.txt"):
        with pytest.raises(ValueError):
            store.delete(bad)
        with pytest.raises(ValueError), store.local_copy(bad):
            pass


def test_the_sweep_sees_only_old_uploads_of_its_own(store):
    name = store.commit(store.stage(io.BytesIO(b"img")), ".gif")
    # Someone else's file beside ours: never listed, so never swept.
    if isinstance(store, S3UploadStore):
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}notes.txt", Body=b"hi")
    else:
        (store.root / "notes.txt").write_text("hi")
    assert list(store.names_older_than(datetime.now(UTC) - timedelta(minutes=5))) == []
    assert list(store.names_older_than(FAR_FUTURE)) == [name]


def test_create_makes_the_bucket_once(s3_upload_dir, s3_server, tmp_path):
    bucket = f"fresh-{uuid.uuid4().hex[:12]}"
    store = S3UploadStore(f"s3://{bucket}/uploads", max_bytes=10, staging_dir=tmp_path)
    store.create()
    store.create()  # already there: nothing to do, no error
    client = s3_server.client()
    client.head_bucket(Bucket=bucket)  # raises unless it exists
    assert stored(store) == set()
    client.delete_bucket(Bucket=bucket)


def test_an_unreachable_object_store_is_store_unavailable_and_leaves_nothing(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = S3UploadStore("s3://bucket/prefix", max_bytes=1000, staging_dir=tmp_path)
    staged = store.stage(io.BytesIO(b"img"))
    with pytest.raises(StorageUnavailable) as refused:
        store.commit(staged, ".png")
    assert refused.value.status == 503 and "127.0.0.1" not in refused.value.message
    with pytest.raises(StorageUnavailable), store.local_copy("0" * 32 + ".png"):
        pass
    assert list(tmp_path.iterdir()) == []  # neither the staged upload nor a download is left


def test_object_store_mode_stages_in_its_own_directory_and_sweeps_only_there(tmp_path, monkeypatch):
    """Another program's ``.upload-x`` in the shared system temp directory survives the sweep."""
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    foreign = system_tmp / ".upload-x"
    foreign.write_text("someone else's")
    settings = Settings(upload_dir="s3://bucket/prefix", staging_dir=tmp_path / "own" / "staging")
    store = open_upload_store(settings)
    assert store.staging_dir == tmp_path / "own" / "staging"
    assert stat.S_IMODE(store.staging_dir.stat().st_mode) == 0o700
    staged = store.stage(io.BytesIO(b"img"))
    assert staged.path.parent == store.staging_dir
    assert store.remove_stale_temp_files(FAR_FUTURE) == 1  # ours, however young, is swept
    assert foreign.read_text() == "someone else's"
    assert Settings.from_env({"STAGING_DIR": str(tmp_path / "s")}).staging_dir == tmp_path / "s"


def test_upload_dir_picks_the_store(tmp_path):
    local = open_upload_store(Settings.from_env({"UPLOAD_DIR": str(tmp_path / "up")}))
    assert isinstance(local, LocalUploadStore) and local.root == tmp_path / "up"
    env = {"UPLOAD_DIR": "s3://my-bucket/imgsvc/uploads/", "STAGING_DIR": str(tmp_path / "s")}
    remote = open_upload_store(Settings.from_env(env))
    assert isinstance(remote, S3UploadStore)
    assert (remote.bucket, remote.prefix) == ("my-bucket", "imgsvc/uploads/")
    bare = open_upload_store(Settings(upload_dir="s3://my-bucket", staging_dir=tmp_path / "s"))
    assert (bare.bucket, bare.prefix) == ("my-bucket", "")
    for bad in ("s3://", "gs://bucket/x", "s3://bucket/x?versionId=1"):
        with pytest.raises(ConfigError):
            Settings.from_env({"UPLOAD_DIR": bad})


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("holiday.jpg", "holiday.jpg"),
        ("C:\\Users\\me\\Pictures\\cat.png", "cat.png"),  # old browsers send the whole path
        ("../../etc/passwd", "passwd"),
        ("two\r\nlines\x00.png", "twolines.png"),
        ("invoice\u202egnp.exe", "invoicegnp.exe"),  # a right-to-left override hides the real extension
        ("Cafe\u0301.jpg", "Caf\u00e9.jpg"),  # one spelling of the same name
        ("<img src=x onerror=alert(1)>.png", "<img src=x onerror=alert(1)>.png"),  # text, kept as text
        ("x" * 300 + ".jpeg", "x" * 250 + ".jpeg"),
        ("   ", None),
        ("..", None),
        ("", None),
        (None, None),
    ],
)
def test_client_filename_keeps_a_short_safe_basename(raw, kept):
    assert client_filename(raw) == kept


def test_a_parsed_upload_is_staged_as_it_arrives_and_taken_without_a_copy(store):
    """The web side's multipart parser writes into a StagingFile: stage() takes that very file."""
    from imgsvc.storage.uploads import StagingFile

    staging = StagingFile(store.staging_dir, store.max_bytes)
    for chunk in (b"ab", b"", b"cd" * 100):
        staging.write(chunk)
    staging.seek(0)
    assert staging.read(4) == b"abcd"  # readable, as werkzeug's FileStorage expects
    staged = store.stage(staging)
    assert staged.path == staging.path and staged.size == 202
    assert staged.sha256 == hashlib.sha256(b"ab" + b"cd" * 100).hexdigest()
    staging.close()  # the request ends: a file handed over stays for the commit
    name = store.commit(staged, ".jpg")
    with store.local_copy(name) as path:
        assert path.read_bytes() == b"ab" + b"cd" * 100
    assert leftovers(store) == []


def test_a_staging_file_over_the_limit_or_never_taken_is_removed(store):
    from imgsvc.storage.uploads import StagingFile

    too_big = StagingFile(store.staging_dir, max_bytes=10)
    for _ in range(3):
        too_big.write(b"x" * 6)  # over the limit: no longer stored, still counted
    assert leftovers(store) == []
    with pytest.raises(FileTooLarge, match="18 bytes"):
        store.stage(too_big)
    abandoned = StagingFile(store.staging_dir, max_bytes=10)
    abandoned.write(b"x")
    assert len(leftovers(store)) == 1
    abandoned.close()  # e.g. the request failed after parsing
    empty = StagingFile(store.staging_dir, max_bytes=10)
    with pytest.raises(EmptyFile):
        store.stage(empty)
    assert leftovers(store) == []
