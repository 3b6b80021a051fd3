// The upload page: every picked or dropped image becomes a card that follows its job through
// the public API (submit, then the job's event stream; status and result polls where the stream
// cannot be had). No framework, no build step, same origin only.
"use strict";

(function () {
  const form = document.getElementById("upload-form");
  const input = document.getElementById("file-input");
  const list = document.getElementById("jobs");
  const emptyNote = document.getElementById("empty-note");
  const template = document.getElementById("job-template");

  const keyForm = document.getElementById("key-form");
  const keyInput = document.getElementById("api-key");

  const maxFileSize = Number(form.dataset.maxFileSize);
  const submitUrl = form.getAttribute("action");
  const statusUrl = (id) => form.dataset.statusUrl.replace("JOB_ID", encodeURIComponent(id));
  const resultUrl = (id) => form.dataset.resultUrl.replace("JOB_ID", encodeURIComponent(id));
  const readyUrl = form.dataset.readyUrl;
  const eventsUrl = (id) => form.dataset.eventsUrl.replace("JOB_ID", encodeURIComponent(id));

  // Polling backs off from fast (short jobs feel instant) to a steady pace (long queues stay cheap).
  const POLL_FIRST_MS = 400;
  const POLL_MAX_MS = 3000;
  // While the server cannot be reached, keep retrying this long before giving the card up.
  const GIVE_UP_AFTER_MS = 2 * 60 * 1000;

  // Where the bar stands in each state; the upload itself fills 0..UPLOADED.
  const UPLOADED = 30;
  const STATES = {
    uploading: { label: "Uploading", progress: 0 },
    queued: { label: "Queued", progress: 45 },
    processing: { label: "Processing", progress: 75 },
    done: { label: "Done", progress: 100 },
    failed: { label: "Failed", progress: 100 },
  };

  // Words for each HTTP error; the server's own message follows them.
  const ERROR_TITLES = {
    400: "The upload was refused",
    404: "The job was not found",
    413: "Too large",
    415: "Not a supported image",
    503: "The service is unavailable right now",
  };

  function formatSize(bytes) {
    const units = ["bytes", "KB", "MB", "GB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1).replace(/\.0$/, "")} ${units[unit]}`;
  }

  // "a: b" with exactly one full stop, whatever the server's message ends with.
  function sentence(title, message) {
    const text = message ? `${title}: ${String(message).replace(/[.\s]+$/, "")}` : title;
    return `${text}.`;
  }

  // A server answer (parsed JSON or null) as one sentence a person can act on.
  function errorText(httpStatus, body) {
    if (httpStatus === 401) return keyRefused();
    const title = ERROR_TITLES[httpStatus] || `The server answered with an error (HTTP ${httpStatus})`;
    return sentence(title, body && body.error && body.error.message);
  }

  // --- API key (API_KEYS on the server): kept in this tab's sessionStorage, sent as X-API-Key. ---
  const KEY_STORAGE = "imgsvc.apiKey";
  try {
    keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    // storage disabled: the key lasts as long as the page
  }
  keyInput.addEventListener("input", () => {
    try {
      if (keyInput.value.trim()) sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // as above
    }
  });
  keyForm.addEventListener("submit", (event) => event.preventDefault());

  function apiHeaders() {
    const key = keyInput.value.trim();
    return key ? { Accept: "application/json", "X-API-Key": key } : { Accept: "application/json" };
  }

  // A 401: show the key field (also when the page did not expect keys) and say what to do.
  function keyRefused() {
    keyForm.hidden = false;
    keyInput.focus();
    return keyInput.value.trim()
      ? "The API key was not accepted: check it and try again."
      : "This service needs an API key: enter it in the API key field above, then try again.";
  }

  // "Too large: this file is 10.5 MB; the limit is 10 MB." (in bytes when rounding would hide the gap)
  function tooLargeText(size, limit) {
    let [shown, limitShown] = [formatSize(size), formatSize(limit)];
    if (shown === limitShown) [shown, limitShown] = [`${size} bytes`, `${limit} bytes`];
    return `Too large: this file is ${shown}; the limit is ${limitShown}.`;
  }

  const MODEL_FAILED = "The model could not describe this image";

  // A job that ended without a description: failed (the model's error) or cancelled (someone's DELETE).
  function endedText(body) {
    return body.status === "cancelled" ? "This job was cancelled." : sentence(MODEL_FAILED, body.error);
  }

  // -- What the model found: boxes over the preview, and one line in words ----------------------

  // A face's expression is named only when the emotion model is this sure of it: the scene
  // describer's sentence calls a face smiling from the same score (SMILE_SCORE, 0.8) and no lower.
  const SURE_EMOTION = 0.8;

  const percent = (score) => `${Math.round(Number(score) * 100)}%`;
  const unit = (value) => Math.min(1, Math.max(0, Number(value) || 0));

  // Every box of a result, in the image's normalised coordinates; kind picks the style.
  function sceneBoxes(result) {
    const boxes = (result.objects || []).map((found) => ({
      kind: found.label === "person" ? "person" : "object",
      label: `${found.label} ${percent(found.score)}`,
      box: found.box,
    }));
    for (const face of (result.people && result.people.faces) || []) {
      const sure = face.emotion && Number(face.emotion_score) >= SURE_EMOTION;
      const emotion = sure ? ` · ${face.emotion}` : "";
      boxes.push({ kind: "face", label: `face ${percent(face.score)}${emotion}`, box: face.box });
    }
    return boxes;
  }

  // "2 people · 1 smiling · cup, motorcycle"; empty when the model found nothing to say.
  function sceneSummary(result) {
    const objects = result.objects || [];
    const people = result.people ? result.people.count : objects.filter((o) => o.label === "person").length;
    const parts = [];
    if (people) parts.push(people === 1 ? "1 person" : `${people} people`);
    if (result.people && result.people.smiling) parts.push(`${result.people.smiling} smiling`);
    const things = [...new Set(objects.map((o) => o.label).filter((label) => label !== "person"))];
    if (things.length) parts.push(things.join(", "));
    return parts.join(" · ");
  }

  // The rectangle the preview really covers inside its frame (object-fit: contain letterboxes it).
  function shownImageRect(media, img) {
    const scale = Math.min(media.clientWidth / img.naturalWidth, media.clientHeight / img.naturalHeight);
    const width = img.naturalWidth * scale;
    const height = img.naturalHeight * scale;
    return { left: (media.clientWidth - width) / 2, top: (media.clientHeight - height) / 2, width, height };
  }

  const BOX_BORDER = 2; // px, as .scene-box's border in app.css
  // Where a label may go, best first: faces sit inside people, so theirs go below the face and
  // leave the space above the person's box to the person's own label.
  const LABEL_PLACES = { face: ["below", "above", "inside"], other: ["above", "inside", "below"] };

  const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;

  // Each label at the first place that keeps it on the picture and off the labels placed before it;
  // failing that, the first place on the picture. Never past the image's left or right edge.
  function placeLabels(layer) {
    const area = layer.getBoundingClientRect();
    const taken = [];
    for (const label of layer.querySelectorAll(".scene-label")) {
      const box = label.parentElement;
      label.style.left = "";
      const overflow = box.offsetLeft + label.offsetWidth - layer.clientWidth;
      if (overflow > 0) label.style.left = `${-BOX_BORDER - Math.min(overflow, box.offsetLeft)}px`;
      const places = LABEL_PLACES[box.dataset.kind] || LABEL_PLACES.other;
      let fallback = null;
      let chosen = null;
      for (const place of places) {
        label.dataset.place = place;
        const rect = label.getBoundingClientRect();
        if (rect.top < area.top - 0.5 || rect.bottom > area.bottom + 0.5) continue;
        fallback = fallback || place;
        if (!taken.some((other) => overlap(other, rect))) {
          chosen = place;
          break;
        }
      }
      label.dataset.place = chosen || fallback || "inside";
      taken.push(label.getBoundingClientRect());
    }
  }

  // How many workers /readyz counts, asked at most every READY_EVERY_MS for all cards together;
  // null when it cannot say (unreachable, or Redis down).
  const READY_EVERY_MS = 5000;
  let readyAsked = 0;
  let readyAnswer = Promise.resolve(null);
  function liveWorkers() {
    if (Date.now() - readyAsked >= READY_EVERY_MS) {
      readyAsked = Date.now();
      readyAnswer = fetch(readyUrl, { headers: { Accept: "application/json" } })
        .then((response) => response.json())
        .then((body) => (body && body.checks && Number.isInteger(body.checks.workers) ? body.checks.workers : null))
        .catch(() => null);
    }
    return readyAnswer;
  }

  const NO_WORKER = "Waiting: no worker is running, so no image is being described until one starts.";

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  class JobCard {
    constructor(file) {
      this.file = file;
      this.root = template.content.firstElementChild.cloneNode(true);
      this.el = (selector) => this.root.querySelector(selector);
      this.el(".card-title").textContent = file.name || "pasted image";
      this.el(".card-title").title = file.name || "";
      const img = this.el(".card-image");
      img.alt = `Preview of ${file.name || "the pasted image"}`;
      this.previewUrl = URL.createObjectURL(file);
      img.addEventListener("error", () => this.el(".card-media").classList.add("no-preview"), { once: true });
      img.src = this.previewUrl;
      this.el(".copy").addEventListener("click", () => this.copy());
      this.setState("uploading");
      list.prepend(this.root);
      emptyNote.hidden = true;
    }

    setState(state, detail = "") {
      this.root.dataset.state = state;
      this.el(".badge").textContent = STATES[state].label;
      this.el(".status-detail").textContent = detail;
      this.setProgress(STATES[state].progress);
    }

    setProgress(percent) {
      const bar = this.el(".progress");
      bar.setAttribute("aria-valuenow", String(Math.round(percent)));
      bar.setAttribute("aria-label", `${this.file.name || "image"}: ${this.el(".badge").textContent}`);
      this.el(".progress-bar").style.width = `${percent}%`;
    }

    fail(message) {
      this.setState("failed");
      const error = this.el(".error");
      error.textContent = message;
      error.hidden = false;
    }

    showResult(result) {
      this.setState("done", result.cached ? "Described before; the stored answer was reused." : "");
      this.el(".description").textContent = result.image_description;
      this.el(".model").textContent = result.generated_by;
      const summary = sceneSummary(result);
      this.el(".scene-summary").textContent = summary;
      this.el(".scene-summary").hidden = !summary;
      this.drawScene(sceneBoxes(result));
      this.el(".result").hidden = false;
    }

    drawScene(boxes) {
      if (!boxes.length) return;
      const layer = this.el(".scene");
      for (const { kind, label, box } of boxes) {
        const x1 = unit(box.x1);
        const y1 = unit(box.y1);
        const frame = document.createElement("div");
        frame.className = `scene-box scene-${kind}`;
        frame.dataset.kind = kind;
        frame.style.left = `${x1 * 100}%`;
        frame.style.top = `${y1 * 100}%`;
        frame.style.width = `${Math.max(0, unit(box.x2) - x1) * 100}%`;
        frame.style.height = `${Math.max(0, unit(box.y2) - y1) * 100}%`;
        const text = document.createElement("span");
        text.className = "scene-label";
        text.textContent = label;
        frame.append(text);
        layer.append(frame);
      }
      this.root.classList.add("has-scene");
      const media = this.el(".card-media");
      const img = this.el(".card-image");
      const fit = () => {
        if (!img.naturalWidth || media.classList.contains("no-preview")) return;
        const rect = shownImageRect(media, img);
        for (const side of ["left", "top", "width", "height"]) layer.style[side] = `${rect[side]}px`;
        layer.hidden = false;
        placeLabels(layer);
      };
      // The card grows to show the boxes, the window may be resized, the preview may still be loading.
      new ResizeObserver(fit).observe(media);
      img.addEventListener("load", fit);
      fit();
    }

    async copy() {
      const text = this.el(".description").textContent;
      const feedback = this.el(".copy-feedback");
      let copied = false;
      // The Clipboard API needs a secure context (https or localhost); execCommand covers plain http.
      if (navigator.clipboard && window.isSecureContext) {
        copied = await navigator.clipboard.writeText(text).then(() => true, () => false);
      }
      if (!copied) {
        const area = document.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.className = "visually-hidden";
        document.body.append(area);
        area.select();
        try {
          copied = document.execCommand("copy");
        } catch (_) {
          copied = false;
        }
        area.remove();
      }
      feedback.textContent = copied ? "Copied" : "Could not copy; select the text instead";
      clearTimeout(this.feedbackTimer);
      this.feedbackTimer = setTimeout(() => (feedback.textContent = ""), 2500);
    }

    async start() {
      if (this.file.size > maxFileSize) {
        this.fail(tooLargeText(this.file.size, maxFileSize));
        return;
      }
      let submitted;
      try {
        submitted = await this.upload();
      } catch (message) {
        this.fail(message);
        return;
      }
      this.jobId = submitted.job_id;
      this.root.dataset.jobId = this.jobId;
      this.setState("queued");
      if (!(await this.stream())) this.poll();
    }

    // Follows the job's server-sent events (GET /jobs/<id>/events), read through fetch rather than
    // EventSource so the API key header goes with it. True when the card reached a final state;
    // false when the stream could not be had or ended early (the server bounds each stream):
    // polling takes over from there.
    async stream() {
      if (!window.ReadableStream || !window.TextDecoder) return false;
      let reader;
      try {
        const headers = { ...apiHeaders(), Accept: "text/event-stream" };
        const response = await fetch(eventsUrl(this.jobId), { headers });
        if (!response.ok || !response.body) return false;
        reader = response.body.getReader();
      } catch (_) {
        return false;
      }
      const decoder = new TextDecoder();
      let buffer = "";
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return false;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const event = parseEvent(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (event && this.onEvent(event.name, event.data)) {
              reader.cancel().catch(() => {});
              return true;
            }
          }
        }
      } catch (_) {
        return false;
      }
    }

    // One event of the stream; true when it is a final state.
    onEvent(name, body) {
      if (name === "done") {
        this.showResult(body);
        return true;
      }
      if (name === "failed" || name === "cancelled") {
        this.fail(endedText(body));
        return true;
      }
      if (name === "deleted") {
        this.fail(errorText(404, null));
        return true;
      }
      if (name === "queued" || name === "processing") {
        const retrying = name === "queued" && body.error;
        this.setState(name, retrying ? `Retrying after an error: ${body.error}` : "");
        if (name === "queued") this.watchWorkers();
      }
      return false;
    }

    // A stream says nothing while a job waits: while the card shows "Queued", ask /readyz (shared by
    // all cards) whether any worker is alive, and say so on the card when none is.
    watchWorkers() {
      if (this.workerWatch) return;
      const check = async () => {
        if (this.root.dataset.state !== "queued") {
          clearInterval(this.workerWatch);
          this.workerWatch = null;
        } else if ((await liveWorkers()) === 0 && this.root.dataset.state === "queued") {
          this.el(".status-detail").textContent = NO_WORKER;
        }
      };
      this.workerWatch = setInterval(check, READY_EVERY_MS);
      check();
    }

    // XMLHttpRequest rather than fetch: only it reports upload progress.
    upload() {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        const data = new FormData();
        data.append("file", this.file, this.file.name || "pasted-image");
        xhr.open("POST", submitUrl);
        for (const [name, value] of Object.entries(apiHeaders())) xhr.setRequestHeader(name, value);
        xhr.upload.addEventListener("progress", (event) => {
          if (event.lengthComputable) this.setProgress((event.loaded / event.total) * UPLOADED);
        });
        xhr.addEventListener("load", () => {
          const body = parseJson(xhr.responseText);
          if (xhr.status === 202 && body && body.job_id) resolve(body);
          else reject(errorText(xhr.status, body));
        });
        xhr.addEventListener("error", () =>
          reject("Cannot reach the server: check the connection and try again.")
        );
        xhr.send(data);
      });
    }

    async poll() {
      let delay = POLL_FIRST_MS;
      let unreachableSince = null;
      for (;;) {
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 1.5, POLL_MAX_MS);
        let response;
        let body;
        try {
          response = await fetch(statusUrl(this.jobId), { headers: apiHeaders() });
          body = parseJson(await response.text());
        } catch (_) {
          unreachableSince = unreachableSince || Date.now();
          if (Date.now() - unreachableSince > GIVE_UP_AFTER_MS) {
            this.fail("Cannot reach the server, so this image's status is unknown. Reload the page later.");
            return;
          }
          this.el(".status-detail").textContent = "Cannot reach the server; still trying…";
          continue;
        }
        unreachableSince = null;
        if (!response.ok || !body) {
          this.fail(errorText(response.status, body));
          return;
        }
        if (body.status === "failed" || body.status === "cancelled") {
          this.fail(endedText(body));
          return;
        }
        if (body.status === "done") {
          if (await this.fetchResult()) return;
          continue;
        }
        const retrying = body.status === "queued" && body.error;
        let detail = retrying ? `Retrying after an error: ${body.error}` : "";
        if (body.status === "queued" && (await liveWorkers()) === 0) detail = NO_WORKER;
        this.setState(body.status, detail);
      }
    }

    // True when the card reached a final state; false to keep polling (a race with the worker).
    async fetchResult() {
      let response;
      let body;
      try {
        response = await fetch(resultUrl(this.jobId), { headers: apiHeaders() });
        body = parseJson(await response.text());
      } catch (_) {
        return false;
      }
      if (response.status === 200 && body) {
        this.showResult(body);
        return true;
      }
      if (response.status === 202) return false;
      if (response.status === 422 && body) {
        this.fail(endedText(body));
      } else {
        this.fail(errorText(response.status, body));
      }
      return true;
    }
  }

  // "event: NAME\ndata: JSON" (comment lines start with ":") -> { name, data }; null for a comment.
  function parseEvent(block) {
    let name = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    const parsed = parseJson(data.join("\n"));
    return name && parsed ? { name, data: parsed } : null;
  }

  function handleFiles(files) {
    for (const file of files) new JobCard(file).start();
  }

  input.addEventListener("change", () => {
    handleFiles(Array.from(input.files));
    input.value = ""; // so picking the same file again is a new upload
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    handleFiles(Array.from(input.files));
    input.value = "";
  });

  // A drop anywhere on the page counts; without this the browser would open the file instead.
  let dragDepth = 0;
  const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    form.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) form.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    form.classList.remove("dragging");
    handleFiles(Array.from(event.dataTransfer.files));
  });

  // Pasting an image (e.g. a screenshot) uploads it too.
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? Array.from(event.clipboardData.files) : [];
    if (files.length) {
      event.preventDefault();
      handleFiles(files);
    }
  });
})();
