"""Fast CPU inference: plain fp32 vs inference_mode vs int8 dynamic quantization vs thread counts.

    python -m bench.inference [--images 6] [--repeat 1] [--model blip-base|tiny] [--quick]

Variants, each describing the same images (preprocess + generate exactly 20 tokens + decode):
  fp32 plain           model.generate as transformers ships it (its own no_grad), no inference_mode
  fp32 inference_mode  TransformersCaptioner.describe as the service runs it
  int8 dynamic         the captioner loaded with quantize="int8" (QUANTIZE=int8): Linear layers int8
  fp32, 1 thread       inference_mode with torch.set_num_threads(1) instead of one per core

Calls are interleaved (variant order rotates every image) and each variant's median time
is compared with fp32 plain's. Caption agreement fp32 vs int8 is the fraction of images
whose captions match exactly. The weights are random, so agreement on a real checkpoint
cannot be measured here: it says only how far int8 rounding moves this network's argmax.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from PIL import Image

from bench import harness
from bench.harness import median, table
from imgsvc.vision.captioners.captioner import TransformersCaptioner


def plain(captioner: TransformersCaptioner) -> Callable[[Image.Image], str]:
    def describe(image: Image.Image) -> str:
        inputs = captioner.preprocess([image])
        limits = {"max_new_tokens": captioner.max_new_tokens, "min_new_tokens": captioner.min_new_tokens}
        return captioner.decode(captioner.model.generate(**inputs, **limits))[0]

    return describe


def shipped(captioner: TransformersCaptioner, threads: int | None = None) -> Callable[[Image.Image], str]:
    def describe(image: Image.Image) -> str:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            return captioner.describe([image])[0]
        finally:
            torch.set_num_threads(before)

    return describe


def word_agreement(a: str, b: str) -> float:
    """Fraction of word positions where two captions agree."""
    left, right = a.split(), b.split()
    longest = max(len(left), len(right)) or 1
    return sum(x == y for x, y in zip(left, right, strict=False)) / longest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over the images")
    parser.add_argument("--model", choices=sorted(harness.MODEL_DIRS), default="blip-base")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 images (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeat, args.model = 3, 1, "tiny"

    import transformers  # noqa: F401 - imported before the clock starts: load times are loads

    started = time.perf_counter()
    fp32 = harness.load_captioner(args.model)
    fp32_load = time.perf_counter() - started
    started = time.perf_counter()
    int8 = harness.load_captioner(args.model, quantize="int8")
    int8_load = time.perf_counter() - started
    cores = os.cpu_count() or 1
    variants = {
        f"fp32 plain ({cores} threads)": plain(fp32),
        f"fp32 inference_mode ({cores} threads)": shipped(fp32),
        f"int8 dynamic ({cores} threads)": shipped(int8),
        "fp32 inference_mode (1 thread)": shipped(fp32, threads=1),
    }
    harness.header("inference: CPU variants vs fp32 plain", model=args.model, tokens=harness.TOKENS)
    print(f"load: fp32 {fp32_load:.1f} s, int8 {int8_load:.1f} s (quantizing included)")

    images = [harness.decoded(jpeg) for jpeg in harness.photos(args.images)]
    names = list(variants)
    captions: dict[str, list[str]] = {name: [] for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: first calls allocate and pick kernels
        variants[name](images[0])
    for r in range(max(1, args.repeat)):
        for i, image in enumerate(images):
            shift = (r * len(images) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                begin = time.perf_counter()
                text = variants[name](image)
                times[name].append(time.perf_counter() - begin)
                if r == 0:
                    captions[name].append(text)

    base = median(times[names[0]])
    print()
    table(
        ["variant", "median s/image", "images/s", "speed vs fp32 plain"],
        [
            [
                name,
                f"{median(times[name]):.3f}",
                f"{1 / median(times[name]):.3f}",
                f"{base / median(times[name]):.2f}x",
            ]
            for name in names
        ],
    )
    same = captions[names[0]] == captions[names[1]]
    pairs = list(zip(captions[names[1]], captions[names[2]], strict=True))
    exact = sum(a == b for a, b in pairs) / len(pairs)
    words = sum(word_agreement(a, b) for a, b in pairs) / len(pairs)
    print(f"\nplain and inference_mode captions identical: {same}")
    print(
        f"caption agreement fp32 vs int8 on {len(pairs)} images: exact match {exact:.2f}, words {words:.2f}"
    )
    print("  (random weights: agreement on the real checkpoint cannot be measured here)")
    for a, b in pairs[:2]:
        print(f"  fp32: {a[:90]}\n  int8: {b[:90]}")
    best = max(names[1:], key=lambda name: base / median(times[name]))
    print(f"\nfastest: {best}, {base / median(times[best]):.2f}x fp32 plain")


if __name__ == "__main__":
    main()
