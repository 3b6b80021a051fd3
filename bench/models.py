"""The model families side by side: CPU seconds per photo and peak RSS at real size, against BLIP-base.

    python -m bench.models [--quick] [--only NAME,...] [--repeat 1]

Each case runs in a fresh interpreter (``--one``), so its peak RSS (VmHWM) is its own and no model's
threads or caches colour the next. The models are built at their real dimensions (and vocabulary) from
their real config classes with random weights, in memory: compute does not depend on the weights, and
every model generates exactly ``TOKENS`` tokens per task (``min_new_tokens`` = ``max_new_tokens``), so
the random weights' early stops never make a model look cheap. Photos are scikit-image's, downscaled as
the worker does (MAX_IMAGE_SIDE=1024), then preprocessed by each model's own processor (Florence-2 768 px,
BLIP 384 px, SmolVLM in 512 px tiles plus a global view).

The cost is CPU seconds (user + system) per photo on one thread, after a one-photo warm-up: on a shared
machine it moves far less than wall time, which is shown beside it. ``QUANTIZE=int8`` rows quantize the
Linear layers with torch's dynamic quantization (``QUANTIZE=int8`` in the service).
Decision rule (issue 20): Florence-2-base becomes the default captioner when its ``<CAPTION>`` CPU cost
per photo is within 2x BLIP-base's at batch 1 in the same run.
``--quick`` (CI): the tiny test checkpoints of the three families, batch 2.
Not measured here: Qwen2.5-VL-3B / Qwen3-VL-2B (the same ``ChatVLMDescriber``): 9-15 GB in fp32 and
minutes per photo on this shared machine; a GPU host is where they belong.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import goal, header, table
from imgsvc.config import PROJECT_ROOT

TOKENS = 20
#: One thread: CPU seconds are then the model's compute, not OpenMP threads spin-waiting for a core
#: that other processes hold (on a shared machine that doubled the tiny models' CPU time).
THREADS = 1


@dataclass(frozen=True)
class Case:
    #: What the table says: family, size, task.
    name: str
    family: str  # blip | florence2 | smolvlm
    size: str
    batch: int
    task: str = "caption"  # caption | full (Florence-2: caption + objects + text) | answer (a VLM)
    quantize: str | None = None


def cases(quick: bool, only: set[str] | None) -> list[Case]:
    if quick:
        chosen = [
            Case(f"{family} tiny", family, "tiny", 2, task)
            for family, task in (("blip", "caption"), ("florence2", "full"), ("smolvlm", "answer"))
        ]
    else:
        models = [
            ("BLIP-base", "blip", "blip-base", "caption"),
            ("Florence-2-base <CAPTION>", "florence2", "base", "caption"),
            ("Florence-2-base caption+OD+OCR", "florence2", "base", "full"),
            ("Florence-2-large <CAPTION>", "florence2", "large", "caption"),
            ("Florence-2-large caption+OD+OCR", "florence2", "large", "full"),
            ("SmolVLM-256M-Instruct", "smolvlm", "256m", "answer"),
            ("SmolVLM-500M-Instruct", "smolvlm", "500m", "answer"),
        ]
        chosen = [Case(name, family, size, 1, task) for name, family, size, task in models]
        # Batch 8 where a photo costs seconds; SmolVLM's 13 tiles a photo and Florence-2-large would take
        # many minutes a case on a shared 2-core machine.
        chosen += [Case(name, family, size, 8, task) for name, family, size, task in models[:3]]
        chosen += [
            Case(f"{name} int8", family, size, 1, task, "int8")
            for name, family, size, task in models[:2] + models[5:6]
        ]
    if only:
        chosen = [case for case in chosen if case.family in only or case.name in only]
    return chosen


# -- one case, in its own interpreter -----------------------------------------------------------
def run_case(case: Case, repeat: int) -> dict[str, Any]:
    """Build, warm up once, then time ``repeat`` batches; CPU time is the process's, every thread."""
    import torch

    from bench.harness import decoded, photos

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    describer, options = _describer(case)
    params = sum(p.numel() for p in describer.model.parameters())
    build_s = time.perf_counter() - started
    images = [decoded(jpeg) for jpeg in photos(case.batch)]
    describer.describe_full(images[:1], options)  # warm-up: first-call allocations and kernels
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    for _ in range(repeat):
        texts = describer.describe_full(images, options)
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    count = repeat * case.batch
    return {
        "params_m": round(params / 1e6),
        "build_s": round(build_s, 1),
        "cpu_s_per_photo": round(cpu / count, 3),
        "wall_s_per_photo": round(wall / count, 3),
        "peak_rss_mb": round(_peak_rss_mb()),
        "sample": texts[0].text[:40],
    }


def _describer(case: Case) -> tuple[Any, dict[str, Any]]:
    import torch

    from imgsvc.vision import testing_utils
    from imgsvc.vision.captioners.captioner import TransformersCaptioner, quantized

    cpu = torch.device("cpu")
    fixed = {"min_new_tokens": TOKENS}
    if case.family == "blip":
        model, processor = testing_utils.blip_parts(case.size)
        model = quantized(model.eval(), case.quantize, cpu)
        captioner = TransformersCaptioner(
            case.name, "blip", model, processor.image_processor, processor.tokenizer,
            device=cpu, max_new_tokens=TOKENS, **fixed,
        )  # fmt: skip
        return captioner, {}
    if case.family == "florence2":
        from imgsvc.vision.captioners.florence2 import Florence2Describer

        model, processor = testing_utils.florence2_parts(case.size)
        model = quantized(model.eval(), case.quantize, cpu)
        full = case.task == "full"
        florence = Florence2Describer(
            case.name, model, processor, device=cpu, max_new_tokens=TOKENS, max_answer_tokens=TOKENS,
            objects=full, **fixed,
        )  # fmt: skip
        return florence, {"ocr": "always" if full else "never"}
    from imgsvc.vision.captioners.chat_vlm import ChatVLMDescriber

    model, processor = testing_utils.smolvlm_parts(case.size)
    model = quantized(model.eval(), case.quantize, cpu)
    vlm = ChatVLMDescriber(
        case.name, "smolvlm", model, processor, device=cpu, max_answer_tokens=TOKENS, **fixed
    )
    return vlm, {}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    """VmHWM: this process's peak resident set (ru_maxrss would include what the parent had at exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


# -- the comparison ---------------------------------------------------------------------------
def measure(case: Case, repeat: int) -> dict[str, Any] | None:
    command = [
        sys.executable,
        "-m",
        "bench.models",
        "--one",
        json.dumps(asdict(case)),
        "--repeat",
        str(repeat),
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  {case.name} batch {case.batch}: FAILED\n{done.stderr[-1500:]}", flush=True)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {case.name:<36} batch {case.batch}{' int8' if case.quantize else ''}: {result}", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="families or case names, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="timed batches per case, after one warm-up")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(Case(**json.loads(args.one)), args.repeat)))
        return
    header(
        "models: CPU s per photo and peak RSS, random weights at real size", tokens=TOKENS, threads=THREADS
    )
    only = {name.strip() for name in args.only.split(",") if name.strip()} or None
    results = {case: measure(case, args.repeat) for case in cases(args.quick, only)}
    baseline = {
        (case.batch, case.quantize): result["cpu_s_per_photo"]
        for case, result in results.items()
        if result and case.family == "blip"
    }
    rows = []
    for case, result in results.items():
        if result is None:
            rows.append([case.name, case.batch, case.quantize or "fp32", "failed", "", "", "", ""])
            continue
        base = baseline.get((case.batch, case.quantize))
        ratio = f"{result['cpu_s_per_photo'] / base:.2f}x" if base else "-"
        rows.append([
            case.name, case.batch, case.quantize or "fp32", result["params_m"], result["cpu_s_per_photo"],
            ratio, result["wall_s_per_photo"], result["peak_rss_mb"],
        ])  # fmt: skip
    print()
    table(
        [
            "model",
            "batch",
            "weights",
            "params M",
            "CPU s/photo",
            "vs BLIP-base",
            "wall s/photo",
            "peak RSS MB",
        ],
        rows,
    )
    deciding = Case("Florence-2-base <CAPTION>", "florence2", "base", 1)
    florence = results.get(deciding)
    blip = baseline.get((1, None))
    if florence and blip:
        ratio = florence["cpu_s_per_photo"] / blip
        goal(
            "Florence-2-base <CAPTION> within 2x BLIP-base's CPU per photo (batch 1): the default captioner",
            ratio <= 2,
            f"{florence['cpu_s_per_photo']:.2f} s vs {blip:.2f} s = {ratio:.2f}x",
            applies=not args.quick,
        )


if __name__ == "__main__":
    main()
