"""Compare describer backends side by side, in one process, on scikit-image's sample photos.

    python -m bench.backends [--repeat 5] [--ocr off] [--threads N] [--backends SPEC,SPEC...]

The default backends: ``builtin:efficientnet-lite0`` (the classifier alone) and ``builtin:scene``.

For each photo it prints every backend's description and its median time per image (after a
warm-up call), plus each backend's time relative to the first. Runs are interleaved across
backends so that load from elsewhere on the machine hits them alike. Then each backend once on
all the photos in one batch and the same photos one at a time, alternately, ``--repeat`` + 2
rounds (medians kept). The goal lines check the scene describer (issue 24): at most 120 ms a photo
without OCR (the default here) at one thread, and a batch never costing more per photo than one
photo at a time ("within noise" where its CPU time is under the slowest round of the very same
photos one at a time); both next to the classifier alone (the first backend) in the same run,
whose ratio is the figure to compare across noisy machines.

Besides wall time it reports the process's CPU time per photo: on a shared machine that is the
steadier figure, and with ``--threads 1`` it is what the wall time would be on an idle core
(with more threads it adds up every thread's time). The goal is judged on both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from PIL import Image
from skimage import data

from imgsvc.config import Settings
from imgsvc.vision import Describer, load_describer

DEFAULT_BACKENDS = "builtin:efficientnet-lite0,builtin:scene"
SCENE_BUDGET_MS = 120
PHOTOS: dict[str, Callable[[], Image.Image]] = {
    "astronaut": lambda: Image.fromarray(data.astronaut()),
    "chelsea": lambda: Image.fromarray(data.chelsea()),
    "coffee": lambda: Image.fromarray(data.coffee()),
    "rocket": lambda: Image.fromarray(data.rocket()),
    "page": lambda: Image.fromarray(data.page()).convert("RGB"),
    "motorcycle_left": lambda: Image.fromarray(data.stereo_motorcycle()[0]),
}


def timed(describer: Describer, image: Image.Image) -> tuple[str, float, float]:
    """The description, and the wall and CPU seconds it took."""
    start, cpu = time.perf_counter(), time.process_time()
    (text,) = describer.describe([image])
    return text, time.perf_counter() - start, time.process_time() - cpu


def clocked(run: Callable[[], object], photos: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per photo that ``run`` took."""
    start, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - start) * 1000 / photos, (time.process_time() - cpu) * 1000 / photos


def median_pair(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs per image and backend (median kept)"
    )
    parser.add_argument("--backends", default=DEFAULT_BACKENDS, help="comma-separated VISION_MODEL specs")
    parser.add_argument("--ocr", default="off", choices=["auto", "on", "off"])
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: TORCH_THREADS / cores)"
    )
    args = parser.parse_args(argv)

    describers = []
    for spec in (s.strip() for s in args.backends.split(",") if s.strip()):
        start = time.perf_counter()
        settings = Settings.from_env(vision_model=spec, ocr=args.ocr)
        if args.threads:
            settings = settings.with_(torch_threads=args.threads)
        describers.append(load_describer(settings))
        print(f"loaded {describers[-1].name} in {time.perf_counter() - start:.2f} s")
    print(f"torch threads: {torch.get_num_threads()}")
    width = max(len(d.name) for d in describers)
    totals = [0.0] * len(describers)
    cpu_totals = [0.0] * len(describers)

    for photo, load in PHOTOS.items():
        image = load()
        texts = [timed(d, image)[0] for d in describers]  # warm-up, and the text we print
        runs: list[list[float]] = [[] for _ in describers]
        cpu_runs: list[list[float]] = [[] for _ in describers]
        for _ in range(max(1, args.repeat)):
            for i, describer in enumerate(describers):
                _, wall, cpu = timed(describer, image)
                runs[i].append(wall)
                cpu_runs[i].append(cpu)
        medians = [statistics.median(r) for r in runs]
        cpu_medians = [statistics.median(r) for r in cpu_runs]
        print(f"\n{photo} ({image.width}x{image.height})")
        for i, describer in enumerate(describers):
            totals[i] += medians[i]
            cpu_totals[i] += cpu_medians[i]
            ratio = f"  ({medians[i] / medians[0]:.2f}x)" if i else ""
            print(
                f"  {describer.name:<{width}}  {medians[i] * 1000:7.1f} ms{ratio:9}"
                f" cpu {cpu_medians[i] * 1000:7.1f} ms  {texts[i]}"
            )

    print(f"\nmean per photo (medians; ratio to {describers[0].name}):")
    for i, describer in enumerate(describers):
        ratio = f"  ({totals[i] / totals[0]:.2f}x)" if i else ""
        print(
            f"  {describer.name:<{width}}  wall {totals[i] / len(PHOTOS) * 1000:7.1f} ms{ratio:9}"
            f" cpu {cpu_totals[i] / len(PHOTOS) * 1000:7.1f} ms"
        )

    images = [load() for load in PHOTOS.values()]
    rounds = max(1, args.repeat) + 2
    print(f"\nall {len(images)} photos in one batch vs one at a time, {rounds} rounds each (ms per photo):")
    batched: list[tuple[float, float]] = []  # (wall, cpu) per photo, medians
    alone: list[tuple[float, float]] = []
    alone_slowest: list[float] = []  # CPU: the noise of doing the very same work again
    for describer in describers:
        runs: dict[str, list[tuple[float, float]]] = {"batch": [], "alone": []}
        for _ in range(rounds):  # alternately, so that load from elsewhere hits both alike
            runs["batch"].append(clocked(lambda d=describer: d.describe(images), len(images)))
            runs["alone"].append(clocked(lambda d=describer: [d.describe([i]) for i in images], len(images)))
        batched.append(median_pair(runs["batch"]))
        alone.append(median_pair(runs["alone"]))
        alone_slowest.append(max(cpu for _, cpu in runs["alone"]))
        (bw, bc), (aw, ac) = batched[-1], alone[-1]
        print(
            f"  {describer.name:<{width}}  batch wall {bw:7.1f} cpu {bc:7.1f}"
            f"  one at a time wall {aw:7.1f} cpu {ac:7.1f}  (batch/alone cpu {bc / ac:.2f}x)"
        )

    for i, describer in enumerate(describers):
        if not describer.name.startswith("builtin:scene"):
            continue
        wall, cpu = totals[i] / len(PHOTOS) * 1000, cpu_totals[i] / len(PHOTOS) * 1000
        alone_wall, alone_cpu = totals[0] / len(PHOTOS) * 1000, cpu_totals[0] / len(PHOTOS) * 1000
        if args.ocr == "off":
            verdict = "met" if min(wall, cpu) <= SCENE_BUDGET_MS else "NOT met"
            print(
                f"goal scene describer <= {SCENE_BUDGET_MS} ms/photo without OCR: wall {wall:.0f} ms, "
                f"cpu {cpu:.0f} ms at {torch.get_num_threads()} thread(s) "
                f"({totals[i] / totals[0]:.1f}x {describers[0].name} alone: "
                f"{alone_wall:.0f} ms wall, {alone_cpu:.0f} ms cpu)"
                f" - {verdict}"
            )
        (bw, bc), (aw, ac) = batched[i], alone[i]
        verdict = (
            "met"
            if bw <= aw or bc <= ac
            else "met within noise (cpu under the slowest round one at a time)"
            if bc <= alone_slowest[i]
            else "NOT met"
        )
        print(
            f"goal scene describer batch of {len(images)} <= one at a time, per photo: "
            f"wall {bw:.0f} vs {aw:.0f} ms, cpu {bc:.0f} vs {ac:.0f} ms "
            f"(batch/alone cpu {bc / ac:.2f}x; {describers[0].name} alone {batched[0][1] / alone[0][1]:.2f}x)"
            f" - {verdict}"
        )


if __name__ == "__main__":
    main()
