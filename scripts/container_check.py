"""Build the image and run compose.yaml's production profile for real, without a Docker engine.

Started by ``scripts/container-check.sh`` (``make container-check``), which installs the host tools.
Every service's image, command, environment, volumes, ports, health check, dependencies and
replicas come from ``docker compose config`` rendered from the real compose.yaml, in a clean copy of
the checkout whose ``.env`` is made from ``.env.example`` as docs/deploy.md tells a user to. Each service
instance then runs from its image with ``buildah run`` in a network namespace of its own, so it
listens on the ports compose.yaml gives it and reaches the others by service name, as in a compose
network; only loopback and unix sockets carry the traffic (see ``Network`` below).

Why not ``podman``/``docker compose up``: no container engine can start containers on these machines
(rootful podman's runc cannot set rlimits), but buildah's chroot isolation can run a built image.
Third-party images (redis, nginx, ...) cannot be pulled here either: each is replaced by a stand-in
built from the same local Debian base with Debian's package (``scripts/standins/NAME.Containerfile``),
so the service's own command and volumes run against the same program.

Settings (environment): CHECK_STATE (buildah storage and the cached base image, default
/var/lib/imgsvc-container-check), CHECK_STORAGE_DRIVER (overlay), CHECK_PROFILE (production),
CHECK_PORT_BASE (first loopback port to publish on; default: any free port), CHECK_WHEELS (a wheel
directory used at build time in place of PyTorch's CPU index; default: pip's find-links here),
CHECK_KEEP=1 (leave containers and the temp dir for a look), DEBIAN_MIRROR, COMPOSE (the compose binary).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STANDINS = ROOT / "scripts" / "standins"
STATE = Path(os.environ.get("CHECK_STATE", "/var/lib/imgsvc-container-check"))
DRIVER = os.environ.get("CHECK_STORAGE_DRIVER", "overlay")
PROFILE = os.environ.get("CHECK_PROFILE", "production")
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
COMPOSE = os.environ.get("COMPOSE", "docker-compose")
KEEP = os.environ.get("CHECK_KEEP") == "1"
# The base stands in for python:3.11-slim: Debian bookworm's Python 3.11 as `python`, with venv.
BASE_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
RUN_ID = f"imgsvc-check-{os.getpid()}"
DEFAULT_GRACE = 10.0
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle, which Debian's pip also reads

TIMES: list[tuple[str, float]] = []


class CheckFailed(Exception):
    """A step found a defect: the message says which step and what it saw."""


def say(message: str) -> None:
    print(f"[container-check] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    say(f"--- {name}")
    start = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        TIMES.append((name, elapsed))
        say(f"    {name}: {elapsed:.1f} s")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit is a failed check that shows the command and its output."""
    kwargs.setdefault("text", True)
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        output = (
            ((result.stdout or "") + (result.stderr or ""))[-4000:] if kwargs.get("capture_output") else ""
        )
        raise CheckFailed(f"exit {result.returncode}: {shlex.join(cmd)}\n{output}")
    return result


def buildah(*args: str) -> list[str]:
    """buildah on the check's own storage, so nothing here touches another user's images."""
    return [
        "buildah",
        "--root",
        str(STATE / "storage"),
        "--runroot",
        str(STATE / "run"),
        "--storage-driver",
        DRIVER,
        *args,
    ]


def image_exists(name: str) -> bool:
    probe = subprocess.run(buildah("inspect", "--type", "image", name), capture_output=True)
    return probe.returncode == 0


def inspect_image(name: str) -> dict:
    out = run(buildah("inspect", "--type", "image", name), capture_output=True).stdout
    return json.loads(out)


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:12]


# --- images -------------------------------------------------------------------------------------


def base_image() -> str:
    """A Debian bookworm image with Python 3.11 from Debian's mirror, made once and kept."""
    tag = f"localhost/imgsvc-check-base:{BASE_SUITE}-{digest(BASE_SUITE, BASE_PACKAGES)}"
    if image_exists(tag):
        say(f"base image {tag} (cached)")
        return tag
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=STATE))
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                BASE_SUITE,
                str(rootfs),
                MIRROR,
            ]
        )
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {MIRROR} {BASE_SUITE} main\n"
            f"deb {MIRROR} {BASE_SUITE}-updates main\n"
            f"deb {MIRROR}-security {BASE_SUITE}-security main\n"
        )
        run(["chroot", str(rootfs), "apt-get", "clean"])
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        container = run(buildah("from", "scratch"), capture_output=True).stdout.strip()
        try:
            mount = run(buildah("mount", container), capture_output=True).stdout.strip()
            run(["cp", "-a", f"{rootfs}/.", mount])
            run(buildah("umount", container))
            run(
                buildah(
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "python3",
                    container,
                )
            )
            run(buildah("commit", "--quiet", container, tag), capture_output=True)
        finally:
            subprocess.run(buildah("rm", container), capture_output=True)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    say(f"base image {tag} built from {MIRROR}")
    return tag


def wheel_dir() -> str | None:
    """Where torch's CPU wheel lies on this machine (pip's find-links), if anywhere."""
    configured = os.environ.get("CHECK_WHEELS")
    if configured is None:
        probe = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
        )
        configured = probe.stdout.strip() if probe.returncode == 0 else ""
    return configured if configured and Path(configured).is_dir() else None


def bud(*args: str) -> list[str]:
    """``buildah bud`` as docker builds: layers cached, Docker's format (it keeps HEALTHCHECK).

    The build trusts what this host trusts: its CA bundle is mounted read-only over the image's for the
    build only (nothing of it is committed), so pip reaches PyPI through a TLS-inspecting egress proxy.
    """
    trust = ["-v", f"{HOST_CA}:{HOST_CA}:ro"] if Path(HOST_CA).is_file() else []
    layers = ["--layers", "--force-rm"]  # cache each step; no working container left by a failed one
    return buildah("bud", "--isolation", "chroot", *layers, "--format", "docker", *trust, *args)


def build_app_image(image: str, build: dict, base: str) -> None:
    """``docker compose build`` for one image: the real Dockerfile, target and args, on the local base."""
    context = build["context"]
    cmd = bud("-f", str(Path(context) / build.get("dockerfile", "Dockerfile")))
    if build.get("target"):
        cmd += ["--target", build["target"]]
    for key, value in (build.get("args") or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    cmd += ["--build-arg", f"PYTHON_IMAGE={base}"]
    wheels = wheel_dir()
    if wheels:
        # The same torch CPU build that PyTorch's index serves, from this machine's disk.
        say(f"torch from the wheels in {wheels} (in place of PyTorch's CPU index, out of reach here)")
        cmd += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "PIP_FIND_LINKS=/wheels"]
        cmd += ["--build-arg", "PIP_EXTRA_INDEX_URL="]
    cmd += ["-t", image, context]
    before = inspect_image(image)["FromImageID"] if image_exists(image) else None
    run(cmd)
    if before and before != inspect_image(image)["FromImageID"]:
        # The image this build replaced, with the layers no other image uses: storage stays one build.
        subprocess.run(buildah("rmi", before), capture_output=True)


def standin_image(image: str, base: str) -> str:
    """A local stand-in for a third-party image that cannot be pulled here (Debian's package)."""
    name = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    recipe = STANDINS / f"{name}.Containerfile"
    if not recipe.is_file():
        raise CheckFailed(
            f"{image} cannot be pulled here and has no stand-in: add {recipe.relative_to(ROOT)}"
        )
    tag = f"localhost/imgsvc-check-standin-{name}:{digest(recipe.read_bytes(), base)}"
    if image_exists(tag):
        say(f"{image}: stand-in {tag} (cached)")
    else:
        run(bud("-f", str(recipe), "--build-arg", f"BASE={base}", "-t", tag, str(STANDINS)))
        say(f"{image}: stand-in {tag} built from {recipe.relative_to(ROOT)}")
    return tag


def image_size(image: str) -> str:
    out = run(buildah("images", "--json", image), capture_output=True).stdout
    return json.loads(out)[0]["size"]


# --- compose config -----------------------------------------------------------------------------


def checkout_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and untracked-not-ignored files)."""
    files = run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def write_env(project: Path) -> dict[str, str]:
    """``cp .env.example .env`` plus the values docs/deploy.md says to set: a secret, dashboard logins."""
    chosen = {
        "SECRET_KEY": secrets.token_hex(16),
        "RQ_DASHBOARD_USERNAME": "check",
        "RQ_DASHBOARD_PASSWORD": secrets.token_hex(8),
    }
    lines = []
    for line in (project / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={chosen[key]}" if key in chosen else line)
    (project / ".env").write_text("\n".join(lines) + "\n")
    values = {}
    for line in lines:
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def compose(project: Path, *args: str) -> str:
    # A clean environment: only .env feeds the interpolation, as on a user's fresh checkout.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    cmd = [COMPOSE, "--project-directory", str(project), "-f", str(project / "compose.yaml"), *args]
    return run(cmd, capture_output=True, env=env).stdout


def unescape(value: object) -> object:
    """compose's rendering keeps ``$$`` (a literal ``$``); a container receives ``$``."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    return value


def seconds(duration: str | None, default: float) -> float:
    if not duration:
        return default
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|us|ns|h|m|s)", duration):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


# --- running services ---------------------------------------------------------------------------


@dataclass
class Instance:
    """One container of a service (``worker-1``, ``web-1``) and what runs for it."""

    service: str
    index: int
    spec: dict
    image: str
    container: str = ""
    netns: str = ""
    process: subprocess.Popen | None = None
    log: Path | None = None
    published: dict[int, int] = field(default_factory=dict)  # container port -> loopback port
    exit_code: int | None = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Network:
    """Each instance gets its own network namespace with only ``lo``: it binds its own ports freely.

    Service names resolve to 127.0.0.1 inside every container (``buildah from --add-host``); in each
    namespace a socat listens on 127.0.0.1:PORT for every port of every *other* service and passes the
    connection over a unix socket to that service's namespace, where another socat connects to its
    127.0.0.1:PORT. Published ports are the same: a socat on the host's 127.0.0.1:(free port). Only
    loopback and unix sockets carry traffic; no address outside 127.0.0.0/8 is ever used.
    """

    def __init__(self, tmp: Path, logs: Path) -> None:
        self.sockets = tmp / "sockets"
        self.sockets.mkdir()
        self.log = (logs / "forwarders.log").open("ab")
        self.forwarders: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.next_port = int(os.environ.get("CHECK_PORT_BASE", "0"))

    def socket(self, service: str, port: int) -> Path:
        return self.sockets / f"{service}-{port}.sock"

    def forward(self, netns: str | None, listen: str, connect: str) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.forwarders.append(
            subprocess.Popen([*prefix, "socat", listen, connect], stdout=self.log, stderr=self.log)
        )

    def namespace(self, name: str) -> str:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
        return name

    def serve(self, instance: Instance, ports: set[int]) -> None:
        """Let the other namespaces (and the host) reach this instance's ports."""
        for port in sorted(ports):
            self.forward(
                instance.netns,
                f"UNIX-LISTEN:{self.socket(instance.service, port)},fork,unlink-early",
                f"TCP:127.0.0.1:{port}",
            )

    def reach(self, instance: Instance, peers: dict[str, set[int]], own: set[int]) -> None:
        """Inside this instance's namespace, SERVICE:PORT of every other service leads to it."""
        for service, ports in peers.items():
            if service == instance.service:
                continue
            for port in sorted(ports - own):
                self.forward(
                    instance.netns,
                    f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{self.socket(service, port)}",
                )

    def free_port(self) -> int:
        while True:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", self.next_port))
                except OSError:
                    self.next_port += 1
                    continue
                port = probe.getsockname()[1]
            if self.next_port:
                self.next_port += 1
            return port

    def publish(self, instance: Instance, target: int) -> int:
        port = self.free_port()
        self.forward(
            None,
            f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
            f"UNIX-CONNECT:{self.socket(instance.service, target)}",
        )
        instance.published[target] = port
        return port

    def close(self) -> None:
        for forwarder in self.forwarders:
            forwarder.terminate()
        for forwarder in self.forwarders:
            with contextlib.suppress(subprocess.TimeoutExpired):
                forwarder.wait(5)
            if forwarder.poll() is None:
                forwarder.kill()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.log.close()


def service_ports(config: dict, project: Path) -> dict[str, set[int]]:
    """The ports each service listens on: published, exposed, or named as SERVICE:PORT anywhere.

    "Anywhere" is the rendered config (URLs in environment and commands) and the files that are
    bind-mounted into a container (a proxy's configuration): what a peer would connect to.
    """
    services = config["services"]
    ports: dict[str, set[int]] = {name: set() for name in services}
    # Image names are left out: a tag like postgres:16 is no port.
    texts = [
        json.dumps({name: {k: v for k, v in spec.items() if k != "image"} for name, spec in services.items()})
    ]
    for name, spec in services.items():
        for entry in spec.get("ports") or []:
            ports[name].add(int(entry["target"]))
        for entry in spec.get("expose") or []:
            ports[name].add(int(str(entry).split("/")[0]))
        for volume in spec.get("volumes") or []:
            source = Path(volume.get("source", ""))
            if volume.get("type") == "bind" and project in source.parents:
                files = [source] if source.is_file() else sorted(source.rglob("*"))[:200]
                texts += [
                    f.read_text(errors="replace") for f in files if f.is_file() and f.stat().st_size < 1 << 20
                ]
    names = "|".join(re.escape(name) for name in services)
    for text in texts:
        for name, port in re.findall(rf"(?<![\w.-])({names}):(\d{{2,5}})\b", text):
            ports[name].add(int(port))
    return ports


def start_order(services: dict[str, dict]) -> list[str]:
    """Every service after what it depends on (compose's order), alphabetical otherwise."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise CheckFailed(f"dependency cycle: {' -> '.join((*path, name))}")
        for dependency in services[name].get("depends_on") or {}:
            visit(dependency, (*path, name))
        done.append(name)

    for name in sorted(services):
        visit(name, ())
    return done


def main_pid(process: subprocess.Popen) -> int | None:
    """The container's main process: the child of buildah's chroot exec helper (PID 1's role)."""
    children: dict[int, list[int]] = {}
    argv0: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
            argv0[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    queue = [process.pid]
    while queue:
        pid = queue.pop(0)
        for child in children.get(pid, []):
            if argv0.get(pid, "").endswith("buildah-chroot-exec"):
                return child
            queue.append(child)
    return None


class Deployment:
    """The services of one profile, started in dependency order and stopped in reverse."""

    def __init__(self, config: dict, images: dict[str, str], project: Path, tmp: Path) -> None:
        self.config = config
        self.project = project
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.volumes = tmp / "volumes"
        self.volumes.mkdir()
        self.network = Network(tmp, self.logs)
        self.ports = service_ports(config, project)
        self.instances: dict[str, list[Instance]] = {}
        for name, spec in config["services"].items():
            replicas = int((spec.get("deploy") or {}).get("replicas") or 1)
            self.instances[name] = [
                Instance(name, i, spec, images[spec["image"]]) for i in range(1, replicas + 1)
            ]
        self.started: list[Instance] = []

    # -- one instance --

    def volume_args(self, instance: Instance, mount: Path | None) -> list[str]:
        args = []
        for volume in instance.spec.get("volumes") or []:
            kind, target = volume["type"], volume["target"]
            mode = ":ro" if volume.get("read_only") else ""
            if kind == "bind":
                args += ["-v", f"{volume['source']}:{target}{mode}"]
            elif kind == "volume":
                source = self.volumes / (volume.get("source") or f"anonymous-{instance.name}-{len(args)}")
                if not source.exists():
                    source.mkdir()
                    # Docker fills a new, empty named volume with what the image has at that path.
                    origin = Path(f"{mount}{target}") if mount else None
                    if origin and origin.is_dir() and not (volume.get("volume") or {}).get("nocopy"):
                        run(["cp", "-a", f"{origin}/.", str(source)])
                        info = origin.stat()
                        os.chown(source, info.st_uid, info.st_gid)
                        os.chmod(source, info.st_mode & 0o7777)
                args += ["-v", f"{source}:{target}{mode}"]
            elif kind == "tmpfs":
                args += ["--mount", f"type=tmpfs,destination={target}"]
            else:
                raise CheckFailed(f"{instance.name}: volume type {kind} is not emulated")
        return args

    def create(self, instance: Instance) -> None:
        hosts = []
        for name in self.config["services"]:
            hosts += ["--add-host", f"{name}:127.0.0.1"]
        for entry in instance.spec.get("extra_hosts") or []:
            hosts += ["--add-host", entry]
        instance.container = f"{RUN_ID}-{instance.name}"
        run(
            buildah("from", "--quiet", "--name", instance.container, *hosts, instance.image),
            capture_output=True,
        )
        instance.netns = self.network.namespace(f"{RUN_ID}-{instance.name}")

    def exec_args(self, instance: Instance, mount_for_volumes: bool = False) -> list[str]:
        spec = instance.spec
        args = ["run", "--isolation", "chroot"]
        for key, value in (spec.get("environment") or {}).items():
            args += ["--env", f"{key}={unescape(value or '')}"]
        if spec.get("user"):
            args += ["--user", spec["user"]]
        if spec.get("working_dir"):
            args += ["--workingdir", spec["working_dir"]]
        if mount_for_volumes:
            # Left mounted until `buildah rm`: an unmount just before `buildah run` mounts it again
            # raced here once (run found an empty rootfs: "open .../run/.containerenv").
            mount = Path(run(buildah("mount", instance.container), capture_output=True).stdout.strip())
            args += self.volume_args(instance, mount)
        else:
            args += self.volume_args(instance, None)
        return args

    def argv(self, instance: Instance) -> list[str]:
        """Entrypoint + command, as a container engine joins the service's and the image's."""
        config = inspect_image(instance.image).get("Docker", {}).get("config", {})
        spec = instance.spec
        entrypoint = spec.get("entrypoint")
        command = spec.get("command")
        if entrypoint is None:
            entrypoint = config.get("Entrypoint") or []
            if command is None:
                command = config.get("Cmd") or []
        argv = [*unescape(entrypoint or []), *unescape(command or [])]
        if not argv:
            raise CheckFailed(f"{instance.name}: neither the service nor its image gives a command")
        return argv

    def start(self, instance: Instance) -> None:
        self.create(instance)
        own = self.ports[instance.service]
        self.network.serve(instance, own)
        self.network.reach(instance, self.ports, own)
        argv = self.argv(instance)
        args = self.exec_args(instance, mount_for_volumes=True)
        instance.log = self.logs / f"{instance.name}.log"
        log = instance.log.open("ab")
        instance.process = subprocess.Popen(
            ["ip", "netns", "exec", instance.netns, *buildah(*args, instance.container, "--", *argv)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append(instance)
        published = []
        for entry in instance.spec.get("ports") or []:
            if instance.index == 1 and entry.get("published"):
                port = self.network.publish(instance, int(entry["target"]))
                published.append(f"{entry['published']}->127.0.0.1:{port}")
        say(
            f"started {instance.name}: {shlex.join(argv)[:100]}"
            + (f"  ports {', '.join(published)}" if published else "")
        )

    # -- health and dependencies --

    def healthcheck(self, instance: Instance) -> list[str] | None:
        check = instance.spec.get("healthcheck")
        if check is None:
            image_check = inspect_image(instance.image).get("Docker", {}).get("config", {}).get("Healthcheck")
            check = {"test": image_check["Test"]} if image_check else None
        if not check or check.get("disable") or not check.get("test") or check["test"][0] == "NONE":
            return None
        test = check["test"]
        if isinstance(test, str):
            return ["/bin/sh", "-c", test]
        return ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])

    def healthy(self, instance: Instance) -> bool:
        test = self.healthcheck(instance)
        if test is None:
            raise CheckFailed(f"{instance.service} is waited on as healthy but has no health check")
        args = self.exec_args(instance)
        probe = subprocess.run(
            ["ip", "netns", "exec", instance.netns, *buildah(*args, instance.container, "--", *test)],
            capture_output=True,
            timeout=60,
        )
        return probe.returncode == 0

    def wait_for(self, dependent: str, name: str, condition: str) -> None:
        deadline = time.monotonic() + 300
        for instance in self.instances[name]:
            while True:
                if condition == "service_completed_successfully":
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        code = instance.process.wait(max(1, deadline - time.monotonic()))
                        if code != 0:
                            raise CheckFailed(f"{name} (needed by {dependent}) exited {code}")
                        break
                elif not instance.running():
                    raise CheckFailed(
                        f"{instance.name} (needed by {dependent}) exited {instance.process.poll()}"
                    )
                elif condition == "service_started" or self.healthy(instance):
                    break
                if time.monotonic() > deadline:
                    raise CheckFailed(f"{instance.name} not {condition} after 300 s (needed by {dependent})")
                time.sleep(1)

    def up(self) -> None:
        for name in start_order(self.config["services"]):
            for dependency, rule in (self.config["services"][name].get("depends_on") or {}).items():
                condition = rule.get("condition", "service_started")
                start = time.monotonic()
                self.wait_for(name, dependency, condition)
                waited = time.monotonic() - start
                say(f"{name}: {dependency} {condition.removeprefix('service_')} ({waited:.1f} s)")
            for instance in self.instances[name]:
                self.start(instance)

    def one_shot(self) -> set[str]:
        """Services that others wait on to complete (init-db): their exit is no crash."""
        return {
            dependency
            for spec in self.config["services"].values()
            for dependency, rule in (spec.get("depends_on") or {}).items()
            if rule.get("condition") == "service_completed_successfully"
        }

    def assert_running(self) -> None:
        """A service that exited while the deployment runs is a failed check, said at once."""
        exited = [
            f"{instance.name} (exit {instance.process.poll()})"
            for instance in self.started
            if not instance.running() and instance.service not in self.one_shot()
        ]
        if exited:
            raise CheckFailed(f"exited while the deployment ran: {', '.join(exited)}")

    def down(self) -> None:
        for instance in reversed(self.started):
            if not instance.running():
                instance.exit_code = instance.process.poll() if instance.process else None
                continue
            grace = seconds(instance.spec.get("stop_grace_period"), DEFAULT_GRACE)
            sig = getattr(signal, instance.spec.get("stop_signal") or "SIGTERM")
            pid = main_pid(instance.process)
            start = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid or instance.process.pid, sig)
            try:
                instance.exit_code = instance.process.wait(grace)
                # buildah's own status: 1 when the process died of the signal, and buildah 1.28
                # sometimes panics (exit 2) after a clean exit; the service's log has its own word.
                took = time.monotonic() - start
                say(f"stopped {instance.name} in {took:.1f} s (buildah run exit {instance.exit_code})")
            except subprocess.TimeoutExpired:
                os.killpg(instance.process.pid, signal.SIGKILL)
                instance.exit_code = instance.process.wait()
                say(f"killed {instance.name} after its {grace:.0f} s stop grace period")

    def remove(self, containers: bool) -> None:
        self.network.close()
        for instance in self.started:
            if instance.process.poll() is None:
                os.killpg(instance.process.pid, signal.SIGKILL)
                instance.process.wait()
        for instances in self.instances.values():
            for instance in instances:
                if instance.container and containers:
                    subprocess.run(buildah("rm", instance.container), capture_output=True)

    def tail_logs(self, lines: int = 25) -> None:
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            print(f"----- {path.name} (last {len(text)} lines)\n" + "\n".join(text), flush=True)


# --- the check itself ---------------------------------------------------------------------------


def photo() -> tuple[str, bytes]:
    """scikit-image's astronaut (a real photo) from the project's dev venv."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    code = (
        "import io, sys; from PIL import Image; from skimage import data; b = io.BytesIO(); "
        "Image.fromarray(data.astronaut()).save(b, 'JPEG', quality=90); sys.stdout.buffer.write(b.getvalue())"
    )
    made = subprocess.run([str(venv_python), "-c", code], capture_output=True)
    if made.returncode != 0:
        raise CheckFailed("the photo comes from scikit-image in .venv: run scripts/bootstrap.sh --dev first")
    return "astronaut.jpg", made.stdout


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def exercise(deployment: Deployment, env: dict[str, str]) -> None:
    """A user's first minutes: submit a photo on the public port, wait for the answer, ask /readyz."""
    public = int(env.get("WEB_PORT") or 8000)
    entry = next(
        (
            (instance, instance.published[int(port["target"])])
            for instances in deployment.instances.values()
            for instance in instances
            for port in instance.spec.get("ports") or []
            if str(port.get("published")) == str(public) and int(port["target"]) in instance.published
        ),
        None,
    )
    if entry is None:
        raise CheckFailed(f"no service publishes WEB_PORT {public}")
    instance, port = entry
    base = f"http://127.0.0.1:{port}"
    say(f"the public port {public} is {instance.service}'s, here 127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while True:
        deployment.assert_running()
        with contextlib.suppress(OSError):
            if http("GET", f"{base}/healthz")[0] == 200:
                break
        if time.monotonic() > deadline:
            raise CheckFailed("/healthz did not answer 200 within 120 s")
        time.sleep(1)

    filename, data = photo()
    boundary = secrets.token_hex(12)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    start = time.monotonic()
    status, answer = http(
        "POST", f"{base}/api/v1/submit", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    if status != 202:
        raise CheckFailed(f"submit answered {status}: {answer[:300]!r}")
    job_id = json.loads(answer)["job_id"]
    say(f"submitted {filename} ({len(data)} bytes): 202, job {job_id}")
    while True:
        deployment.assert_running()
        status, answer = http("GET", f"{base}/api/v1/status/{job_id}")
        state = json.loads(answer).get("status") if status == 200 else f"HTTP {status}"
        if state == "done":
            break
        if state in {"failed", "cancelled"} or time.monotonic() - start > 300:
            raise CheckFailed(f"job {job_id} is {state}: {answer[:500]!r}")
        time.sleep(0.5)
    result = json.loads(http("GET", f"{base}/api/v1/result/{job_id}")[1])
    took = time.monotonic() - start
    say(f"done in {took:.1f} s: {result['image_description']!r} ({result.get('generated_by')})")

    status, answer = http("GET", f"{base}/readyz")
    say(f"/readyz: {status} {answer.decode(errors='replace').strip()[:600]}")
    if status != 200:
        raise CheckFailed(f"/readyz answered {status}")

    # Every other published port answers HTTP (the dashboard with the logins from .env).
    token = f"{env.get('RQ_DASHBOARD_USERNAME', '')}:{env.get('RQ_DASHBOARD_PASSWORD', '')}"
    auth = {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    for instances in deployment.instances.values():
        for other in instances:
            for target, host_port in other.published.items():
                if host_port == port:
                    continue
                if other.service == "dashboard":
                    # rq-dashboard is under /rq/: the logins from .env open it, no login is refused.
                    url = f"http://127.0.0.1:{host_port}/rq/"
                    status, anonymous = http("GET", url, headers=auth)[0], http("GET", url)[0]
                    verdict = f"/rq/ {status} with the logins, {anonymous} without"
                    say(f"dashboard on its published port {target}: {verdict}")
                    if (status, anonymous) != (200, 401):
                        raise CheckFailed(f"the dashboard answered {verdict}")
                    continue
                status, _ = http("GET", f"http://127.0.0.1:{host_port}/", headers=auth)
                say(f"{other.service} on its published port {target}: HTTP {status}")
                if status >= 500:
                    raise CheckFailed(f"{other.service}:{target} answered {status}")


def main() -> int:
    if os.geteuid() != 0:
        say("buildah's chroot isolation and network namespaces need root")
        return 2
    (STATE / "storage").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{RUN_ID}-"))
    deployment = None
    ok = False
    total = time.monotonic()
    try:
        with step("base image (debootstrap, cached)"):
            base = base_image()
        with step("compose config"):
            project = checkout_copy(tmp / "project")
            env = write_env(project)
            for profile in compose(project, "config", "--profiles").split():
                compose(project, "--profile", profile, "config", "--quiet")
                say(f"profile {profile}: valid")
            config = json.loads(compose(project, "--profile", PROFILE, "config", "--format", "json"))
            say(f"profile {PROFILE}: {', '.join(sorted(config['services']))}")
        with step("build images"):
            images: dict[str, str] = {}
            for spec in config["services"].values():
                if spec["image"] in images:
                    continue
                if spec.get("build"):
                    build_app_image(spec["image"], spec["build"], base)
                    images[spec["image"]] = spec["image"]
                    say(f"{spec['image']}: {image_size(spec['image'])}")
                else:
                    images[spec["image"]] = standin_image(spec["image"], base)
        deployment = Deployment(config, images, project, tmp)
        with step("start services"):
            deployment.up()
        with step("submit a photo, wait for done, /readyz"):
            exercise(deployment, env)
            deployment.assert_running()
        with step("stop services"):
            deployment.down()
        ok = True
    except (CheckFailed, subprocess.TimeoutExpired) as error:
        say(f"FAILED: {error}")
        if deployment:
            deployment.tail_logs()
    finally:
        with step("clean up"):
            if deployment:
                if not ok:
                    deployment.down()
                deployment.remove(containers=not KEEP)
            if KEEP:
                say(f"kept {tmp} and the containers {RUN_ID}-* (CHECK_KEEP=1)")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    say(f"image storage in {STATE}: {run(['du', '-sh', str(STATE)], capture_output=True).stdout.split()[0]}")
    say("times: " + ", ".join(f"{name} {elapsed:.0f} s" for name, elapsed in TIMES))
    say(f"{'PASSED' if ok else 'FAILED'} in {time.monotonic() - total:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
