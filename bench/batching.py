"""Dynamic batching: the worker's images/s at BATCH_SIZE 1, 4, 8, 16, each against batch 1 in the same run.

    python -m bench.batching [--images 16] [--sizes 1,4,8,16] [--model blip-base|tiny] [--quick]

For each batch size, ``--images`` distinct jobs are submitted through HTTP first (not timed),
then an in-process ImgsvcWorker (burst mode, settings batch_size=k, the same preloaded
describer, exactly 20 tokens per image) works them all off: images/s = images / worker time.
Batch 1 runs first and last; its baseline is the mean of both, and their difference shows
the machine's drift. The time spent inside the describer in the same runs is the raw model
at batch k, which separates the model's own gain from pipeline effects.
"""

from __future__ import annotations

import argparse
import time

from bench import harness
from bench.harness import TimedDescriber, goal, table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16, help="jobs per batch size")
    parser.add_argument("--sizes", default="1,4,8,16", help="batch sizes; 1 is always the baseline")
    parser.add_argument("--model", choices=sorted(harness.MODEL_DIRS), default="blip-base")
    parser.add_argument("--quick", action="store_true", help="tiny model (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.model = "tiny"
    sizes = sorted({1, *(int(s) for s in args.sizes.split(","))})
    order = [*sizes, 1]  # batch 1 first and last
    n = args.images

    describer = TimedDescriber(harness.load_captioner(args.model))
    harness.header("batching: worker BATCH_SIZE k vs 1", model=args.model, images=n, tokens=harness.TOKENS)
    jpegs = harness.photos(n * len(order) + 1)  # every job distinct: no dedupe cache hits
    runs: dict[int, list[tuple[float, float]]] = {k: [] for k in sizes}
    with harness.scratch_service(describer) as service:
        service.submit(jpegs[-1])
        service.work(batch_size=1)  # warm-up: first model call, first connections
        for i, k in enumerate(order):
            for jpeg in jpegs[i * n : (i + 1) * n]:
                service.submit(jpeg)
            describer.reset()
            started = time.perf_counter()
            service.work(batch_size=k)
            elapsed = time.perf_counter() - started
            if describer.images != n:
                raise RuntimeError(f"batch {k}: the model saw {describer.images} images, not {n}")
            runs[k].append((elapsed, describer.seconds))
            print(f"  batch {k:>2}: {elapsed:.2f} s ({describer.calls} model calls)", flush=True)

    def mean(k: int, part: int) -> float:
        return sum(run[part] for run in runs[k]) / len(runs[k])

    base, base_model = mean(1, 0), mean(1, 1)
    (first, _), (last, _) = runs[1]
    print(f"\nbatch 1 first {first:.2f} s, last {last:.2f} s: drift {abs(last - first) / base * 100:.1f} %\n")
    rows = []
    for k in sizes:
        wall, model = mean(k, 0), mean(k, 1)
        rows.append([
            k, f"{n / wall:.3f}", f"{base / wall:.2f}x", f"{n / model:.3f}", f"{base_model / model:.2f}x",
            f"{(wall - model) / n * 1000:.1f}",
        ])  # fmt: skip
    table(
        ["batch", "worker images/s", "vs batch 1", "model images/s", "model vs 1", "non-model ms/job"], rows
    )
    best = max(sizes, key=lambda k: base / mean(k, 0))
    speedup = base / mean(best, 0)
    print()
    detail = f"{speedup:.2f}x at batch {best} on {args.model}"
    goal(">= 1.5x at the best batch size", speedup >= 1.5, detail, args.model == "blip-base")


if __name__ == "__main__":
    main()
