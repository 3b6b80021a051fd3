"""Decoding for the model: what the decode does, and the child process that bounds its time and memory."""

from __future__ import annotations

import array
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from imgsvc.config import PROJECT_ROOT, Settings
from imgsvc.decoding import DecodeError, Decoder, DecoderPool, load_for_model
from tests.integration.procs import wait_until


def save(tmp_path: Path, img: Image.Image, fmt: str, name: str = "img", **kw) -> Path:
    path = tmp_path / f"{name}.{fmt.lower()}"
    img.save(path, format=fmt, **kw)
    return path


# -- the decode itself ------------------------------------------------------------------------
def test_exif_orientation_is_applied_and_metadata_dropped(tmp_path):
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_for_model(save(tmp_path, img, "JPEG", exif=exif.tobytes()), max_pixels=10**7, max_side=1024)
    assert out.size == (10, 40)
    assert out.mode == "RGB" and out.info == {}


def test_orientation_is_applied_after_downscaling(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    path = save(tmp_path, Image.new("RGB", (3000, 1000)), "PNG", exif=exif.tobytes())
    assert load_for_model(path, max_pixels=10**7, max_side=300).size == (100, 300)


def test_transparency_is_flattened_on_white(tmp_path):
    for mode in ("RGBA", "LA", "P"):
        img = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert(mode)
        out = load_for_model(save(tmp_path, img, "PNG", mode), max_pixels=10**7, max_side=1024)
        assert out.getpixel((4, 4)) == (255, 255, 255), mode


def test_large_images_are_downscaled_for_the_model(tmp_path):
    path = save(tmp_path, Image.new("RGB", (3000, 1500)), "PNG")
    assert load_for_model(path, max_pixels=10**7, max_side=512).size == (512, 256)
    jpeg = save(tmp_path, Image.new("RGB", (4000, 2000)), "JPEG")  # decoded at 1/2..1/8 (draft)
    assert load_for_model(jpeg, max_pixels=10**7, max_side=512).size == (512, 256)


def test_a_jpeg_is_decoded_no_larger_than_the_model_reads(tmp_path):
    """A 384-pixel model gets a 4000x3000 photo at 1/4 scale (both sides still >= 384), not at
    1024 on the long side; what the model then sees (its 384x384 resize) is the same picture."""
    photo = Image.radial_gradient("L").resize((4000, 3000)).convert("RGB")
    jpeg = save(tmp_path, photo, "JPEG")
    full = load_for_model(jpeg, max_pixels=10**8, max_side=1024)
    small = load_for_model(jpeg, max_pixels=10**8, max_side=1024, model_side=384)
    assert (full.size, small.size) == ((1024, 768), (1000, 750))
    seen = [image.resize((384, 384), Image.Resampling.BICUBIC) for image in (full, small)]
    assert max(high for _, high in ImageChops.difference(*seen).getextrema()) <= 8
    png = save(tmp_path, photo, "PNG")  # other formats: only MAX_IMAGE_SIDE bounds them
    assert load_for_model(png, max_pixels=10**8, max_side=1024, model_side=384).size == (1024, 768)


def test_the_decoder_child_decodes_for_the_model_it_serves(tmp_path):
    jpeg = save(tmp_path, Image.new("RGB", (640, 480), (0, 90, 0)), "JPEG")
    with Decoder(10**7, 1024, timeout=30, memory_mb=512, model_side=32) as decoder:
        assert decoder.decode(jpeg).size == (80, 60)  # 1/8 scale: both sides still >= 32
    with DecoderPool.from_settings(Settings(max_image_side=1024), model_side=None) as pool:
        assert pool.decode(jpeg).size == (640, 480)


def test_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_for_model(path, max_pixels=10**7, max_side=64)
    assert out.size == (10, 10) and out.getpixel((5, 5)) == (255, 0, 0)


def broken_png(tmp_path: Path) -> Path:
    """Every header and chunk in place, the compressed pixels garbage: passes the web check."""
    data = bytearray(save(tmp_path, Image.effect_noise((64, 48), 60).convert("RGB"), "PNG").read_bytes())
    at = data.index(b"IDAT")
    (length,) = struct.unpack_from(">I", data, at - 4)
    data[at + 4 : at + 4 + length] = b"\xff" * length
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    return path


def test_bad_pixel_data_is_a_decode_error_not_a_blank_image(tmp_path):
    # what the file seems to be, never Pillow's exception type or a made-up file name
    with pytest.raises(DecodeError, match=r"^the file looks like a PNG image but cannot be decoded$"):
        load_for_model(broken_png(tmp_path), max_pixels=10**7, max_side=64)


# -- the child process --------------------------------------------------------------------------
@pytest.fixture()
def good(tmp_path) -> list[Path]:
    return [
        save(tmp_path, Image.new("RGB", (30 + i, 20), (i * 60, 0, 0)), "PNG", f"good{i}") for i in range(3)
    ]


def test_a_batch_gives_one_result_per_path_in_order(tmp_path, good):
    paths = [good[0], broken_png(tmp_path), tmp_path / "missing.png", good[1]]
    with Decoder(10**7, 1024, timeout=30, memory_mb=512) as decoder:
        first, broken, missing, second = decoder.decode_many(paths)
        assert decoder.starts == 1  # one child for the whole batch: bad images do not cost a restart
    assert (first.size, second.size) == ((30, 20), (31, 20))
    assert first.getpixel((0, 0)) == (0, 0, 0) and second.getpixel((0, 0)) == (60, 0, 0)
    assert isinstance(broken, DecodeError) and "cannot be decoded" in str(broken)
    assert isinstance(missing, DecodeError) and "missing" in str(missing)


def test_an_image_over_the_deadline_is_killed_and_the_rest_of_the_batch_decodes(tmp_path, good, scan_bomb):
    """The review's CPU bomb took 42 s in C code that a thread could not interrupt."""
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(scan_bomb)
    with Decoder(10**8, 1024, timeout=1, memory_mb=1024) as decoder:
        started = time.monotonic()
        before, stopped, after = decoder.decode_many([good[0], bomb, good[1]])
        elapsed = time.monotonic() - started
        assert decoder.starts == 2  # the overrun child was killed, a fresh one took the next image
    assert isinstance(stopped, DecodeError) and "DECODE_TIMEOUT=1 s" in str(stopped)
    assert before.size == (30, 20) and after.size == (31, 20)
    assert elapsed < 30  # bounded by the deadline, not by the 42 s the file costs


def test_an_image_over_the_memory_budget_fails_alone(tmp_path, good, webp_bomb):
    """The review's 70 KB WebP: a 6300x6300 canvas, 612 MB at its peak."""
    bomb = tmp_path / "canvas.webp"
    bomb.write_bytes(webp_bomb)
    with Decoder(10**8, 1024, timeout=60, memory_mb=400) as decoder:
        over, fine = decoder.decode_many([bomb, good[0]])
        assert decoder.starts == 1
    assert isinstance(over, DecodeError)
    assert "DECODE_MEMORY_MB=400" in str(over) or "cannot be decoded" in str(over)
    assert fine.size == (30, 20)


def test_a_crashed_child_fails_only_the_image_it_was_on(tmp_path, good):
    with Decoder(10**7, 1024, timeout=30, memory_mb=512) as decoder:
        assert decoder.decode(good[0]).size == (30, 20)
        os.kill(decoder._child.pid, signal.SIGKILL)  # as the kernel's OOM killer would
        decoder._child.wait()
        assert decoder.decode(good[1]).size == (31, 20)  # a dead idle child is simply replaced
        assert decoder.starts == 2


def test_the_child_dies_with_its_parent(good):
    """A SIGKILLed worker must not leave its decoder spinning on a bomb."""
    script = (
        "import time\nfrom pathlib import Path\nfrom imgsvc.decoding import Decoder\n"
        f"d = Decoder(10**7, 64, 30, 512)\nd.decode(Path({str(good[0])!r}))\n"
        "print(d._child.pid, flush=True)\ntime.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=10)
    assert wait_until(lambda: not alive(child), timeout=10)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_settings_reach_the_decoder():
    decoder = Decoder.from_settings(Settings(decode_timeout=7, decode_memory_mb=300, max_image_side=512))
    assert (decoder.timeout, decoder.memory_mb, decoder.max_side) == (7, 300, 512)


def test_an_answer_the_parent_does_not_expect_is_refused(tmp_path, good, monkeypatch):
    """The child parses hostile files: what it says back is checked, never unpickled or trusted."""
    with Decoder(10**7, 16, timeout=30, memory_mb=512) as decoder:
        big = save(tmp_path, Image.new("RGB", (32, 32)), "PNG", "big")
        assert decoder.decode(good[0]).size == (16, 11)  # the child starts, told max_side=16
        monkeypatch.setattr(decoder, "max_side", 8)  # the child thinks 16, the parent allows 8
        result = decoder.decode_many([big])[0]
        assert isinstance(result, DecodeError) and "impossible size" in str(result)
        monkeypatch.setattr(decoder, "max_side", 16)
        assert decoder.decode(good[0]).size == (16, 11)


def test_pillow_output_buffer_round_trips(tmp_path):
    img = Image.effect_noise((50, 40), 60).convert("RGB")
    path = save(tmp_path, img, "PNG")
    with Decoder(10**7, 1024, timeout=30, memory_mb=512) as decoder:
        assert decoder.decode(path).tobytes() == img.tobytes()


def test_answers_asked_ahead_are_never_mixed_up(tmp_path):
    """The next image is asked for before this one's answer is read, into a reused buffer."""
    images = [Image.effect_noise((90 - 20 * i, 40 + i), 60).convert("RGB") for i in range(4)]
    paths = [save(tmp_path, img, "PNG", f"noise{i}") for i, img in enumerate(images)]
    with Decoder(10**7, 1024, timeout=30, memory_mb=512) as decoder:
        for _ in range(2):  # the second batch finds the buffer full of the first one's pixels
            decoded = decoder.decode_many(paths)
            assert [d.tobytes() for d in decoded] == [img.tobytes() for img in images]
        assert decoder.decode(paths[2]).tobytes() == images[2].tobytes()
        assert decoder.starts == 1


def test_a_pool_decodes_a_batch_in_order_on_every_child(tmp_path):
    paths = [save(tmp_path, Image.new("RGB", (20 + i, 10), (i, 0, 0)), "PNG", f"p{i}") for i in range(7)]
    with DecoderPool([Decoder(10**7, 1024, timeout=30, memory_mb=512) for _ in range(2)]) as pool:
        pool.start()
        assert len(set(pool.pids())) == 2
        decoded = pool.decode_many([*paths, tmp_path / "missing.png"])
        assert pool.starts == 2
    assert [d.size for d in decoded[:-1]] == [(20 + i, 10) for i in range(7)]
    assert [d.getpixel((0, 0)) for d in decoded[:-1]] == [(i, 0, 0) for i in range(7)]
    assert isinstance(decoded[-1], DecodeError) and "missing" in str(decoded[-1])


def test_in_a_pool_a_bomb_holds_up_only_its_own_child(tmp_path, good, scan_bomb):
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(scan_bomb)
    with DecoderPool([Decoder(10**8, 1024, timeout=3, memory_mb=1024) for _ in range(2)]) as pool:
        pool.start()
        stopped, *fine = pool.decode_many([bomb, *good, *good])
        # the other child decoded all six meanwhile; the bomb's was killed and had nothing left to do
        assert len(pool.pids()) == 1 and pool.starts == 2
    assert isinstance(stopped, DecodeError) and "DECODE_TIMEOUT=3 s" in str(stopped)
    assert [image.size for image in fine] == [(30, 20), (31, 20), (32, 20)] * 2


def test_decode_processes_sets_the_pool_size():
    settings = Settings(decode_processes=3, decode_timeout=7, decode_memory_mb=300, max_image_side=512)
    pool = DecoderPool.from_settings(settings)
    assert [(d.timeout, d.memory_mb, d.max_side) for d in pool.decoders] == [(7, 300, 512)] * 3


@pytest.mark.parametrize(
    ("cores", "workers", "children"), [(1, 1, 1), (2, 1, 1), (8, 1, 2), (16, 1, 4), (64, 1, 4), (16, 4, 1)]
)
def test_by_default_a_worker_gets_a_decoder_child_per_four_cores(cores, workers, children, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    pool = DecoderPool.from_settings(Settings(worker_count=workers))
    assert len(pool.decoders) == children


def test_what_the_child_says_is_reduced_to_plain_text():
    """A child's error can quote bytes from a hostile file; it reaches job rows, logs and pages."""
    from imgsvc.decoding import _printable

    assert _printable("broken PNG file (chunk b'<img src=x onerror=alert(1)>')\x00\x1b[31m") == (
        "broken PNG file (chunk b'?img src=x onerror=alert(1)?')??[31m"
    )
    assert len(_printable("x" * 10_000)) == 300


def test_a_child_that_cannot_start_is_the_hosts_fault_not_the_images(monkeypatch, good):
    from imgsvc.decoding import DecoderUnavailable

    monkeypatch.setattr(sys, "executable", "/bin/false")
    decoder = Decoder(10**7, 64, timeout=30, memory_mb=512)
    with pytest.raises(DecoderUnavailable, match="did not start"):
        decoder.decode_many([good[0]])


def test_the_child_gives_memory_back_when_idle_not_between_the_images_of_a_batch():
    """malloc_trim costs more than decoding a small photo: once per idle spell, not per image."""
    from imgsvc.decoding import _requests

    read, write = os.pipe()
    trims: list[int] = []
    requests = _requests(read, lambda: trims.append(1))
    try:
        os.write(write, b'"a"\n"b"\n"c"\n')  # a batch: three requests at once
        assert [next(requests) for _ in range(3)] == [b'"a"', b'"b"', b'"c"']
        assert trims == []
        later = threading.Timer(1.0, os.write, (write, b'"d"\n'))  # after a pause: one trim first
        later.start()
        assert next(requests) == b'"d"' and trims == [1]
        later.join()
        os.close(write)
        assert list(requests) == []  # the parent closed the pipe: the child ends
    finally:
        os.close(read)


class StoppingDecoder(Decoder):
    """Stops (SIGSTOP) its next ``stops`` children just before asking them for an image, so a
    test can signal a child that surely holds a request it has not answered: mid-decode."""

    def __init__(self, stops: int) -> None:
        super().__init__(10**7, 1024, timeout=30, memory_mb=512)
        self.stops = stops
        self.stopped: list[int] = []

    def _ask(self, child: subprocess.Popen, path: Path) -> None:
        if self.stops and child.pid not in self.stopped:
            self.stops -= 1
            self.stopped.append(child.pid)
            os.kill(child.pid, signal.SIGSTOP)
        super()._ask(child, path)


def holding_a_request(decoder: StoppingDecoder, count: int) -> int:
    """The pid of the ``count``-th stopped child, once its request waits in its pipe."""

    def pending() -> bool:
        child = decoder._child
        if len(decoder.stopped) < count or child is None or child.pid != decoder.stopped[count - 1]:
            return False
        waiting = array.array("i", [0])
        fcntl.ioctl(child.stdin.fileno(), termios.FIONREAD, waiting)
        return waiting[0] > 0

    assert wait_until(pending, timeout=30)
    return decoder.stopped[count - 1]


def decode_signalled(
    decoder: StoppingDecoder, path: Path, *signals: signal.Signals
) -> Image.Image | DecodeError:
    """Decode ``path`` while each successive child gets one of ``signals`` as it holds it."""
    results: list[Image.Image | DecodeError] = []
    thread = threading.Thread(target=lambda: results.extend(decoder.decode_many([path])))
    thread.start()
    for count, sig in enumerate(signals, 1):
        pid = holding_a_request(decoder, count)
        os.kill(pid, sig)
        os.kill(pid, signal.SIGCONT)  # a SIGKILL needs none; any other signal acts once it runs
    thread.join(timeout=60)
    (result,) = results
    return result


def test_a_decoder_killed_mid_decode_is_retried_once_before_the_image_is_blamed(good):
    """The OOM killer or an operator, not the image: before, the job failed for good."""
    with StoppingDecoder(stops=1) as decoder:
        image = decode_signalled(decoder, good[0], signal.SIGKILL)
        assert decoder.starts == 2
    assert image.size == (30, 20)


def test_a_decoder_killed_twice_on_one_image_blames_the_image(good):
    with StoppingDecoder(stops=2) as decoder:
        failed = decode_signalled(decoder, good[0], signal.SIGKILL, signal.SIGKILL)
        assert decoder.decode(good[1]).size == (31, 20)  # the next image gets a fresh child
        assert decoder.starts == 3
    assert isinstance(failed, DecodeError) and "killed by SIGKILL twice" in str(failed)


def test_a_decoder_that_crashes_by_itself_is_not_retried(good):
    """SIGSEGV is Pillow failing on this very image: trying it again would crash again."""
    with StoppingDecoder(stops=1) as decoder:
        failed = decode_signalled(decoder, good[0], signal.SIGSEGV)
        assert decoder.starts == 1
    assert isinstance(failed, DecodeError) and "crashed on this image" in str(failed)
