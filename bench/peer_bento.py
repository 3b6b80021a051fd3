"""The BentoML side of ``python -m bench peer``: the same model, loaded the way imgsvc's worker loads it.

Served by ``.venv-peer/bin/python -m bentoml serve bench.peer_bento:Describe`` (made by
bench/peer-setup.sh; BentoML is never a dependency of imgsvc itself). The model directory and
its settings come from the same environment variables as imgsvc's worker (VISION_MODEL,
MAX_NEW_TOKENS, TORCH_THREADS ...), through imgsvc's own ``load_describer``, so both sides run
byte-for-byte the same model code. Two endpoints, both with BentoML's adaptive batching capped
at the batch size imgsvc's worker is given (BATCH_SIZE): ``/describe`` answers in the call;
``/describe_task/submit|status|get`` is BentoML's task API (submit, then poll).
"""

from __future__ import annotations

import os

import bentoml
from PIL import Image

from imgsvc.config import Settings
from imgsvc.vision import load_describer

BATCH = int(os.environ.get("BATCH_SIZE", "16"))
#: The longest a batch waits for company: BentoML's default (60 s) is the cap; its dispatcher adapts.
MAX_LATENCY_MS = 60_000


@bentoml.service(workers=1, traffic={"timeout": 300})
class Describe:
    def __init__(self) -> None:
        self.describer = load_describer(Settings.from_env())

    def _texts(self, images: list[Image.Image]) -> list[str]:
        return [d.text for d in self.describer.describe_full([image.convert("RGB") for image in images])]

    @bentoml.api(batchable=True, max_batch_size=BATCH, max_latency_ms=MAX_LATENCY_MS)
    def describe(self, image: list[Image.Image]) -> list[str]:
        return self._texts(image)

    @bentoml.task(batchable=True, max_batch_size=BATCH, max_latency_ms=MAX_LATENCY_MS)
    def describe_task(self, image: list[Image.Image]) -> list[str]:
        return self._texts(image)
