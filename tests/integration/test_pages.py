"""The page at /: served as plain HTML, then driven end to end in a real headless Chromium.

The browser test runs the real app on a real port and a real worker process, so what it checks
is what a person sees: a picked image goes queued -> processing -> done and shows the model's text.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

from imgsvc import create_app
from imgsvc.config import PROJECT_ROOT, Settings
from imgsvc.web.pages import human_size
from tests.conftest import worker_env
from tests.integration.procs import wait_until
from tests.integration.scene_double import NAME, OBJECTS, PEOPLE, scene_photo

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "browser.png"
# Headless, and nothing that phones home: the test must pass with no network at all.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1100,1200",
]
JOB_DEADLINE_S = 60
RECORD_STATES = """
window.cardStates = {};
const record = (card) => {
  const seen = (window.cardStates[card.querySelector("h3").textContent] ||= []);
  if (seen[seen.length - 1] !== card.dataset.state) seen.push(card.dataset.state);
};
new MutationObserver((mutations) => {
  for (const m of mutations) {
    if (m.type === "attributes") record(m.target);
    else m.addedNodes.forEach((node) => node.matches && node.matches("li.card") && record(node));
  }
}).observe(
  document.getElementById("jobs"),
  {subtree: true, childList: true, attributeFilter: ["data-state"]}
);
"""

# The preview's width each time a card changes state (read after the change's layout).
RECORD_WIDTHS = """
window.mediaWidths = {};
new MutationObserver(() => {
  for (const card of document.querySelectorAll("li.card")) {
    const seen = (window.mediaWidths[card.querySelector("h3").textContent] ||= []);
    seen.push(card.querySelector(".card-media").getBoundingClientRect().width);
  }
}).observe(
  document.getElementById("jobs"),
  {subtree: true, childList: true, attributeFilter: ["data-state"]}
);
"""


def readiness_answer(message: str) -> bool:
    """The page asks /readyz whether a worker runs; its 503 (none yet) is an answer, not an error."""
    return "/readyz" in message and "status of 503" in message


def test_index_serves_the_upload_form_and_its_assets(client, settings):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert re.search(r'<form id="upload-form"[^>]* action="/api/v1/submit"', html)
    assert re.search(r'<input id="file-input"[^>]* type="file" name="file" multiple', html)
    assert f'data-max-file-size="{settings.max_file_size}"' in html and "up to 10 MB each" in html

    assets = re.findall(r'(?:href|src)="(/assets/[^"]+)"', html)
    assert sorted(assets) == ["/assets/app.css", "/assets/app.js", "/assets/favicon.svg"]
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200 and asset.data
        assert asset.mimetype in {"text/css", "text/javascript", "image/svg+xml"}
        asset.close()


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 bytes"), (1000, "1000 bytes"), (2048, "2 KB"), (1536 * 1024, "1.5 MB"), (10 * 1024**2, "10 MB")],
)
def test_the_page_states_the_limit_in_readable_units(size, text):
    assert human_size(size) == text


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """The real app on a free port, served by werkzeug in a background thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture()
def live_url(app) -> Iterator[str]:
    with serving(app) as url:
        yield url


@contextlib.contextmanager
def running_worker(settings: Settings, log_path: Path, *command: str, **env_extra: str) -> Iterator[Path]:
    """A worker as deployed, in a process of its own: RQ's signal handling needs a main thread."""
    env = worker_env(settings, MAX_NEW_TOKENS="8", **env_extra)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *command], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield log_path
    finally:
        proc.terminate()  # SIGTERM: RQ's warm shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def worker_process(settings, tiny_model_dir, tmp_path) -> Iterator[Path]:
    """``python worker.py`` with the tiny captioner."""
    with running_worker(settings, tmp_path / "worker.log", "worker.py") as log_path:
        yield log_path


@pytest.fixture()
def scene_worker(settings, tmp_path) -> Iterator[Path]:
    """``python worker.py`` whose model is the fixed-scene test double (the scene describer's stand-in)."""
    with running_worker(
        settings, tmp_path / "worker.log", "-m", "tests.integration.scene_double"
    ) as log_path:
        yield log_path


def start_chromium(profile: Path) -> webdriver.Chrome:
    """Debian's headless Chromium with its console log kept; skips the test where it is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromium-driver; missing {', '.join(missing)}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager from looking for (or downloading) one.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture()
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def card_for(driver: webdriver.Chrome, file_name: str) -> WebElement:
    return driver.find_element(By.XPATH, f'//li[@data-state][.//h3[text()="{file_name}"]]')


def wait_until_settled(driver: webdriver.Chrome, file_name: str, worker_log: Path) -> WebElement:
    """The card once it is done or failed; on a timeout, say where it got stuck and why."""

    def settled(d: webdriver.Chrome) -> WebElement | bool:
        cards = d.find_elements(By.XPATH, f'//li[@data-state][.//h3[text()="{file_name}"]]')
        return bool(cards) and cards[0].get_attribute("data-state") in {"done", "failed"} and cards[0]

    try:
        return WebDriverWait(driver, JOB_DEADLINE_S, poll_frequency=0.2).until(settled)
    except Exception:
        state = [c.get_attribute("data-state") for c in driver.find_elements(By.CSS_SELECTOR, "li.card")]
        log = worker_log.read_text(errors="replace")[-3000:] if worker_log.exists() else "(no worker log)"
        pytest.fail(f"{file_name} never finished in {JOB_DEADLINE_S}s; cards: {state}\nworker log:\n{log}")


def text_of(card: WebElement, selector: str) -> str:
    return card.find_element(By.CSS_SELECTOR, selector).get_attribute("textContent")


def test_browser_uploads_images_and_shows_descriptions_and_errors(
    browser, live_url, worker_process, client, settings, tmp_path
):
    from skimage import data

    photo = tmp_path / "chelsea-the-cat.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=90)
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list, not a picture\n" * 20)
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (settings.max_file_size + 512 * 1024))

    browser.get(f"{live_url}/")
    assert browser.title.startswith("imgsvc")
    assert not browser.find_element(By.ID, "api-key").is_displayed()  # no API_KEYS: no key to ask for
    # Record every state each card passes through, however briefly it stays in it.
    browser.execute_script(RECORD_STATES)
    file_input = browser.find_element(By.ID, "file-input")
    file_input.send_keys(f"{notes}\n{photo}")  # two at once: the input takes several files

    # The image: queued -> processing -> done, and the card shows what the API says.
    card = wait_until_settled(browser, photo.name, worker_process)
    job_id = card.get_attribute("data-job-id")
    result = client.get(f"/api/v1/result/{job_id}").get_json()
    assert result["status"] == "done"
    assert card.get_attribute("data-state") == "done" and text_of(card, ".badge") == "Done"
    states = browser.execute_script("return window.cardStates[arguments[0]]", photo.name)
    assert states[:2] == ["uploading", "queued"] and states[-1] == "done"
    assert set(states) <= {"uploading", "queued", "processing", "done"}
    # The card followed the job's event stream, not status polls.
    requested = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
    assert any(url.endswith(f"/api/v1/jobs/{job_id}/events") for url in requested)
    assert not any(f"/api/v1/status/{job_id}" in url for url in requested)
    assert card.find_element(By.CSS_SELECTOR, ".progress").get_attribute("aria-valuenow") == "100"
    assert text_of(card, ".description") == result["image_description"]
    assert text_of(card, ".model") == result["generated_by"] == settings.vision_model
    assert card.find_element(By.CSS_SELECTOR, ".copy").is_displayed()
    assert card.find_element(By.CSS_SELECTOR, ".card-image").get_attribute("src").startswith("blob:")
    assert card.find_element(By.CSS_SELECTOR, ".card-image").get_property("naturalWidth") == 451
    # a captioner finds no objects: nothing is drawn over the preview, no summary line
    assert result["objects"] is None and result["people"] is None
    assert card.find_elements(By.CSS_SELECTOR, ".scene-box") == []
    assert not card.find_element(By.CSS_SELECTOR, ".scene-summary").is_displayed()
    assert "has-scene" not in card.get_attribute("class")

    # Not an image: the server refuses it (415) and the card says so in words.
    card = wait_until_settled(browser, notes.name, worker_process)
    error = card.find_element(By.CSS_SELECTOR, ".error")
    assert card.get_attribute("data-state") == "failed" and error.is_displayed()
    assert error.text == (
        "Not a supported image: the file is plain text; "
        "accepted formats are JPEG, PNG, WebP, GIF, BMP and TIFF."
    )
    assert card.get_attribute("data-job-id") is None

    # Too big: refused in the browser before a byte is sent.
    file_input.send_keys(str(huge))
    card = wait_until_settled(browser, huge.name, worker_process)
    assert card.find_element(By.CSS_SELECTOR, ".error").text == (
        "Too large: this file is 10.5 MB; the limit is 10 MB."
    )

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    # No script errors and no Content-Security-Policy violations; the 415 is the one expected failure.
    problems = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
        and "the server responded with a status of 415" not in entry["message"]
        and not readiness_answer(entry["message"])
    ]
    assert problems == []


def test_browser_asks_for_the_api_key_and_keeps_it_in_the_tab(browser, worker_process, settings, tmp_path):
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::4, ::4]).save(photo)
    keyed = create_app(settings.with_(api_keys=("right-key",)))
    with serving(keyed) as url:
        browser.get(f"{url}/")
        key_field = browser.find_element(By.ID, "api-key")
        assert key_field.is_displayed() and key_field.get_attribute("type") == "password"
        file_input = browser.find_element(By.ID, "file-input")

        def upload_and_settle() -> WebElement:
            browser.execute_script("document.getElementById('jobs').replaceChildren()")
            file_input.send_keys(str(photo))
            return wait_until_settled(browser, photo.name, worker_process)

        card = upload_and_settle()
        assert text_of(card, ".error") == (
            "This service needs an API key: enter it in the API key field above, then try again."
        )
        assert browser.switch_to.active_element == key_field  # the cursor is where the key goes

        key_field.send_keys("wrong-key")
        card = upload_and_settle()
        assert text_of(card, ".error") == "The API key was not accepted: check it and try again."

        key_field.clear()
        key_field.send_keys("right-key")
        card = upload_and_settle()
        assert card.get_attribute("data-state") == "done", text_of(card, ".error")
        assert text_of(card, ".description")

        # Kept for this tab (sessionStorage): a reload does not ask again, and nothing else stores it.
        browser.refresh()
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == "right-key"
        assert browser.execute_script("return window.localStorage.length") == 0
        assert browser.get_cookies() == []


# Where each box and label really is on the screen, and the rectangle the preview image covers.
GEOMETRY = """
const card = arguments[0];
const rect = (el) => {
  const r = el.getBoundingClientRect();
  return {x1: r.left, y1: r.top, x2: r.right, y2: r.bottom};
};
const media = card.querySelector(".card-media"), img = card.querySelector(".card-image");
const m = media.getBoundingClientRect();
const scale = Math.min(media.clientWidth / img.naturalWidth, media.clientHeight / img.naturalHeight);
const w = img.naturalWidth * scale, h = img.naturalHeight * scale;
const left = m.left + media.clientLeft + (media.clientWidth - w) / 2;
const top = m.top + media.clientTop + (media.clientHeight - h) / 2;
return {
  image: {x1: left, y1: top, x2: left + w, y2: top + h},
  media: rect(media),
  card: rect(card),
  boxes: [...card.querySelectorAll(".scene-box")].map((box) => ({
    kind: box.dataset.kind,
    label: box.querySelector(".scene-label").textContent,
    box: rect(box),
    labelBox: rect(box.querySelector(".scene-label")),
  })),
};
"""


def inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    return (
        inner["x1"] >= outer["x1"] - slack
        and inner["y1"] >= outer["y1"] - slack
        and inner["x2"] <= outer["x2"] + slack
        and inner["y2"] <= outer["y2"] + slack
    )


def test_browser_draws_what_the_model_found_on_the_preview(browser, live_url, scene_worker, client, tmp_path):
    """Boxes and labels for the objects and faces of a result, where they are in the image."""
    photo = scene_photo(tmp_path / "two-people-a-cup-and-a-motorcycle.jpg")
    browser.get(f"{live_url}/")
    browser.execute_script(RECORD_WIDTHS)
    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    card = wait_until_settled(browser, photo.name, scene_worker)
    result = client.get(f"/api/v1/result/{card.get_attribute('data-job-id')}").get_json()
    assert card.get_attribute("data-state") == "done" and text_of(card, ".model") == NAME
    assert text_of(card, ".scene-summary") == "2 people · 1 smiling · cup, motorcycle"

    # the layer is fitted once the preview has loaded and the card has grown
    WebDriverWait(browser, 10).until(lambda d: card.find_element(By.CSS_SELECTOR, ".scene").is_displayed())
    geometry = browser.execute_script(GEOMETRY, card)
    drawn = geometry["boxes"]
    assert [(b["kind"], b["label"]) for b in drawn] == [
        ("person", "person 95%"),
        ("person", "person 87%"),
        ("object", "cup 47%"),
        ("object", "motorcycle 49%"),
        ("face", "face 88% · happy"),
        ("face", "face 77%"),  # the emotion model is not sure (0.61 neutral): no expression named
    ]
    # The preview kept its width from the moment the card appeared to the drawn result.
    widths = browser.execute_script("return window.mediaWidths[arguments[0]]", photo.name)
    assert len(widths) >= 3 and max(widths) - min(widths) <= 1, widths
    image = geometry["image"]
    width, height = image["x2"] - image["x1"], image["y2"] - image["y1"]
    assert geometry["media"]["x2"] - geometry["media"]["x1"] > 300  # larger than a plain card's 180 px
    expected = [d.box for d in OBJECTS] + [f.box for f in PEOPLE.faces]
    assert len(result["objects"]) + len(result["people"]["faces"]) == len(expected)
    for shown, box in zip(drawn, expected, strict=True):
        for side, x_or_y in (("x1", "x"), ("y1", "y"), ("x2", "x"), ("y2", "y")):
            origin, size = (image["x1"], width) if x_or_y == "x" else (image["y1"], height)
            assert abs(shown["box"][side] - (origin + getattr(box, side) * size)) <= 1.5, (shown, side)
        # every box and every label stays on the picture, hence inside the card
        assert inside(shown["box"], image) and inside(shown["labelBox"], image), shown
        assert inside(shown["labelBox"], geometry["card"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "scene.png"))
    card.screenshot(str(ARTIFACTS / "scene-card.png"))
    severe = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and not readiness_answer(entry["message"])
    ]
    assert severe == []


def test_browser_draws_the_real_scene_describers_person_on_the_astronaut(
    browser, live_url, client, settings, models_dir, tmp_path
):
    """No double: ``python worker.py`` runs builtin:scene on a real photo; the page draws what it found."""
    from skimage import data

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo, quality=90)
    scene = {"VISION_MODEL": "builtin:scene", "MODELS_DIR": str(models_dir)}
    with running_worker(settings, tmp_path / "worker.log", "worker.py", **scene) as log_path:
        # Loading the detectors takes a while on a busy machine: the job's deadline starts once it is up.
        up = wait_until(lambda: client.get("/readyz").status_code == 200, timeout=180, interval=0.5)
        assert up, log_path.read_text(errors="replace")[-3000:]
        browser.get(f"{live_url}/")
        browser.find_element(By.ID, "file-input").send_keys(str(photo))
        card = wait_until_settled(browser, photo.name, log_path)
    assert card.get_attribute("data-state") == "done", text_of(card, ".error")
    model = text_of(card, ".model")
    assert model.startswith("builtin:scene(") and "ssdlite-person" in model and "centernet" in model
    assert re.search(r"\bperson\b", text_of(card, ".description")), text_of(card, ".description")

    WebDriverWait(browser, 10).until(lambda d: card.find_element(By.CSS_SELECTOR, ".scene").is_displayed())
    geometry = browser.execute_script(GEOMETRY, card)
    people = [box for box in geometry["boxes"] if box["kind"] == "person"]
    assert people, geometry["boxes"]
    for shown in people:
        assert re.fullmatch(r"person \d+%", shown["label"]), shown
        assert inside(shown["box"], geometry["image"]) and inside(shown["labelBox"], geometry["image"]), shown
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    card.screenshot(str(ARTIFACTS / "astronaut-card.png"))


def test_a_card_waiting_with_no_worker_says_no_worker_is_running(browser, live_url, tmp_path):
    """No worker at all: the card does not sit silently at "Queued"; /readyz tells it why."""
    photo = tmp_path / "waiting.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(photo)
    browser.get(f"{live_url}/")
    browser.find_element(By.ID, "file-input").send_keys(str(photo))

    def hint(driver: webdriver.Chrome) -> str | bool:
        cards = driver.find_elements(By.XPATH, f'//li[@data-state][.//h3[text()="{photo.name}"]]')
        text = cards[0].find_element(By.CSS_SELECTOR, ".status-detail").text if cards else ""
        return "no worker is running" in text and text

    text = WebDriverWait(browser, 30, poll_frequency=0.2).until(hint)
    assert card_for(browser, photo.name).get_attribute("data-state") == "queued"
    assert text == "Waiting: no worker is running, so no image is being described until one starts."


def test_browser_falls_back_to_polling_when_the_event_stream_is_refused(
    browser, worker_process, settings, tmp_path
):
    """A proxy that does not pass the stream (here: the route answers 503): the card polls instead."""
    from flask import request

    from imgsvc.errors import ServiceUnavailable

    photo = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 40)).save(photo)
    app = create_app(settings)

    @app.before_request
    def no_event_streams() -> None:
        if request.path.endswith("/events"):
            raise ServiceUnavailable()

    with serving(app) as url:
        browser.get(f"{url}/")
        browser.find_element(By.ID, "file-input").send_keys(str(photo))
        card = wait_until_settled(browser, photo.name, worker_process)
        assert card.get_attribute("data-state") == "done", text_of(card, ".error")
        assert text_of(card, ".description")
        requested = browser.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)"
        )
        assert any("/events" in name for name in requested) and any("/api/v1/status/" in n for n in requested)
