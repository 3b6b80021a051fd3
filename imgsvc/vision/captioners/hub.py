"""The captioner's weights and the Hugging Face Hub: are they here, can the Hub be reached, fetch them.

Kept apart from inference and free of torch, so that ``imgsvc fetch-captioner`` (run by ``make run``
before the workers start) answers quickly. Every network call has a short timeout: a machine that
cannot reach the Hub learns so in seconds and runs the offline describer instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgsvc.vision.base import ModelLoadError

if TYPE_CHECKING:
    from imgsvc.config import Settings

#: Seconds to wait for the Hub before saying it is unreachable.
HUB_TIMEOUT = 5.0
# Weight formats transformers' PyTorch loader never reads: not worth downloading.
_FOREIGN_WEIGHTS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "onnx/*", "coreml/*"]
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")


class HubUnreachable(ModelLoadError):
    """The Hub did not answer (no route, refused, timed out); not a verdict about the model."""


@dataclass(frozen=True)
class HubModel:
    """What the Hub says about a model before anything is downloaded."""

    name: str
    #: The files a download fetches (other frameworks' weights and duplicates left out).
    files: tuple[str, ...]
    ignore_patterns: tuple[str, ...]
    #: Bytes of ``files``; None when the Hub did not report sizes.
    size: int | None


def weights_available(name_or_path: str) -> bool:
    """True when the model can be loaded without the network: a local directory or the HF cache."""
    return cached_snapshot(name_or_path) is not None


def cached_snapshot(name_or_path: str) -> Path | None:
    """The directory holding config and weights for ``name_or_path``, without any network access."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:  # not cached, or not even a valid repo id
            return None
    has_weights = any(next(path.glob(pattern), None) for pattern in _WEIGHT_GLOBS)
    return path if (path / "config.json").is_file() and has_weights else None


def offline() -> bool:
    """Offline mode, also when the variable was set after huggingface_hub was imported."""
    from huggingface_hub import constants

    flags = (os.environ.get(var, "").strip().upper() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def looks_like_path(name_or_path: str) -> bool:
    """A local directory (existing or not) rather than a Hub id."""
    return name_or_path.startswith(("/", ".", "~")) or Path(name_or_path).expanduser().is_dir()


def probe_model(name: str, timeout: float = HUB_TIMEOUT) -> HubModel:
    """Ask the Hub about a model, with a short timeout; nothing is downloaded.

    An unreachable Hub is reported in seconds instead of after a long stall: at once when DNS
    or the connection fails, after about ``timeout`` + 3 s when packets are silently dropped
    (huggingface_hub first probes its own agent registry with a 3 s timeout).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    if offline():
        raise ModelLoadError(f"cannot download {name!r}: offline mode is on (HF_HUB_OFFLINE)")
    try:
        info = HfApi().model_info(name, timeout=timeout, files_metadata=True)
    except GatedRepoError as exc:
        raise ModelLoadError(f"model {name!r} is gated: accept its terms, then `hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"no model {name!r} on the Hugging Face Hub (or it is private)") from exc
    except HfHubHTTPError as exc:  # it answered, with an error: say which, do not call it unreachable
        status = exc.response.status_code if exc.response is not None else "an error"
        raise ModelLoadError(f"the Hugging Face Hub answered {status} about {name!r}") from exc
    except Exception as exc:
        raise HubUnreachable(
            f"cannot reach the Hugging Face Hub to download {name!r} ({type(exc).__name__}: {exc}); "
            "download it where the Hub is reachable and copy the cache or the model directory here"
        ) from exc
    siblings = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
    # Checkpoints often carry the same weights twice; safetensors is enough when present.
    ignore = _FOREIGN_WEIGHTS + (["*.bin"] if any(f.endswith(".safetensors") for f in siblings) else [])
    files = tuple(filter_repo_objects(list(siblings), ignore_patterns=ignore))
    sizes = [siblings[f] for f in files]
    size = None if any(s is None for s in sizes) else sum(sizes)
    return HubModel(name, files, tuple(ignore), size)


def download_model(
    name: str, cache_dir: str | None = None, timeout: float = HUB_TIMEOUT, model: HubModel | None = None
) -> str:
    """Fetch a Hub model into the cache for later offline loading; returns its snapshot directory.

    ``model`` is the answer of an earlier :func:`probe_model`; without it the Hub is probed first.
    huggingface_hub draws its own progress bars while the files arrive. The default revision, not
    the probed commit, is asked for: only then does the cache record it as ``main``, where
    :func:`cached_snapshot` (and every offline ``from_pretrained``) looks.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import tqdm

    bars: list[tqdm] = []

    class Bar(tqdm):
        """huggingface_hub's own bar, remembered: it leaves its byte counters open when it returns,
        and their final redraw at exit would land below whatever is printed next."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            bars.append(self)

    model = model or probe_model(name, timeout)
    try:
        return snapshot_download(
            name,
            cache_dir=cache_dir,
            etag_timeout=timeout,
            ignore_patterns=list(model.ignore_patterns),
            tqdm_class=Bar,
        )
    except Exception as exc:
        raise ModelLoadError(f"download of {name!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for bar in bars:
            bar.close()


def fetch_captioner(
    settings: Settings, say: Callable[[str], None] = print, timeout: float = HUB_TIMEOUT
) -> bool:
    """Set-up step: get ``CAPTION_MODEL``'s weights when ``VISION_MODEL=auto`` would want them.

    Asks the Hub only when it may (FETCH_CAPTIONER=auto, HF_HUB_OFFLINE unset) and the weights
    are not here yet; states the size before downloading; never raises: when the weights cannot
    be had, ``auto`` runs the offline describer and ``say`` tells the user so in one line.
    Returns True when it found the weights here or fetched them.
    """
    from huggingface_hub.utils import tqdm

    from imgsvc.vision import DEFAULT_BUILTIN

    name = settings.caption_model
    fallback = f"VISION_MODEL=auto will use the offline describer {DEFAULT_BUILTIN}"
    if settings.fetch_captioner == "off":
        return False
    if settings.vision_model.strip() != "auto":
        return False  # an explicit model is loaded (or refused) as it is
    if weights_available(name):
        return True
    if looks_like_path(name):
        say(f"Captioner {name} is not a model directory; {fallback}.")
        return False
    if offline():
        say(f"HF_HUB_OFFLINE is set, so the Hub was not asked for the captioner {name}; {fallback}.")
        return False
    try:
        model = probe_model(name, timeout)
    except HubUnreachable as exc:
        say(
            f"The Hugging Face Hub did not answer ({type(exc.__cause__).__name__}, {timeout:g} s timeout); "
            f"{fallback}. FETCH_CAPTIONER=off skips this check."
        )
        return False
    except ModelLoadError as exc:
        say(f"Not fetching the captioner: {exc}; {fallback}.")
        return False
    size = "size unknown" if model.size is None else tqdm.format_sizeof(model.size, "B")
    say(
        f"Downloading the captioner {name} ({size} in {len(model.files)} files) into the Hugging Face "
        "cache, once; FETCH_CAPTIONER=off skips this."
    )
    try:
        path = download_model(name, timeout=timeout, model=model)
    except ModelLoadError as exc:
        say(f"{exc}; {fallback}. The next start resumes the download.")
        return False
    say(f"Captioner {name} is ready at {path}; VISION_MODEL=auto will use it.")
    return True
