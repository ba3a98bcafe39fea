"use strict";
// The upload page: pick or drop an image, preview it, POST it to api/v1/predict, show the verdict or the error.
// With "Show evidence" on, it also POSTs the image to api/v1/explain and lays the returned heat map over the
// preview. With "Find faces" on, it asks api/v1/predict?faces=1 and draws each face's box with its verdict over the
// preview. A video goes to api/v1/video (see classify for how the page knows one): the page shows its verdict, its
// suspicious time ranges and draws its timeline, fake probability against time per track, as an SVG of its own.
// Relative URLs, so the page works wherever the app is mounted. body[data-state], body[data-evidence],
// body[data-faces] and body[data-video] tell tests where we are.

const $ = (id) => document.getElementById(id);
const SUSPICIOUS = 0.5;  // the server's threshold for a suspicious range (fastvit_detect.timeline.SUSPICIOUS)
// The timeline's plot area in the SVG's viewBox (560 x 240): time runs left to right, p(fake) bottom to top.
const PLOT = { left: 44, top: 12, right: 548, bottom: 204 };
let previewUrl = null;
let currentFile = null;
let evidence = null;  // the explain response for currentFile
let evidenceRequest = 0;  // answers to an older request (another file, since) are dropped

function setState(state) {
  document.body.dataset.state = state;
  $("busy").hidden = state !== "loading";
}

function percent(probability) {
  return `${(100 * probability).toFixed(1)} %`;
}

async function loadModelInfo() {
  try {
    const response = await fetch("api/v1/model");
    const info = await response.json();
    $("model").textContent = `Model ${info.name} · variant ${info.variant} · labels ${info.labels.join(", ")}`;
    setUpFaces(info.faces);
  } catch (error) {
    $("model").textContent = "Model information unavailable";
  }
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  const size = file.size < 1024 ? `${file.size} bytes` : `${(file.size / 1024).toFixed(0)} KB`;
  $("file-name").textContent = `${file.name} (${size})`;
  $("preview-box").hidden = false;
}

function setUpFaces(faces) {
  const toggle = $("faces");
  if (!faces || !faces.available) {
    toggle.checked = false;
    toggle.disabled = true;
    $("faces-hint").textContent = "— not available: this model package has no face detector (export --faces)";
    return;
  }
  toggle.disabled = false;
  toggle.checked = faces.expected;  // the package's own default: on when its model was trained on face crops
}

function predictUrl() {
  // Disabled (no detector, or the model information hasn't arrived): no parameter, the package decides.
  return $("faces").disabled ? "api/v1/predict" : `api/v1/predict?faces=${$("faces").checked ? 1 : 0}`;
}

function clearFaces() {
  $("face-boxes").replaceChildren();
  $("face-boxes").hidden = true;
  $("face-list").replaceChildren();
  $("face-list").hidden = true;
  $("faces-summary").hidden = true;
  document.body.dataset.faces = "off";
}

function faceVerdict(face) {
  return face.fake_probability === null ? `${face.label} ${percent(face.score)}`
    : `${face.label} · p(fake) ${percent(face.fake_probability)}`;
}

function showFaces(result) {
  if (!result.faces) {
    clearFaces();
    return;
  }
  // Boxes are in the upright original's pixels; as percentages of its size they land on the preview at any scale.
  const { width, height } = result.image;
  const share = (value, whole) => `${(100 * value / whole).toFixed(3)}%`;
  $("face-boxes").replaceChildren(...result.faces.map((face, index) => {
    const [x0, y0, x1, y1] = face.box;
    const box = document.createElement("div");
    box.className = "face-box";
    box.classList.toggle("decisive", index === result.decisive);
    box.classList.toggle("low", y0 < 0.08 * height);  // no room above the box: its tag goes below
    box.classList.toggle("right", x0 > 0.75 * width);  // near the right edge: the tag ends where the box does
    box.dataset.label = face.label.toLowerCase();
    box.dataset.index = String(index);
    box.style.left = share(x0, width);
    box.style.top = share(y0, height);
    box.style.width = share(x1 - x0, width);
    box.style.height = share(y1 - y0, height);
    const tag = document.createElement("span");
    tag.className = "face-tag";
    const fake = face.fake_probability === null ? "" : ` ${(100 * face.fake_probability).toFixed(0)}%`;
    tag.textContent = `${index + 1} ${face.label}${fake}`;
    box.title = `Face ${index + 1}: ${faceVerdict(face)}`;
    box.append(tag);
    return box;
  }));
  $("face-list").replaceChildren(...result.faces.map((face, index) => {
    const item = document.createElement("li");
    const box = face.box.map((value) => value.toFixed(0)).join(", ");
    item.textContent = `${faceVerdict(face)} — box [${box}] px, detector score ${face.face_score.toFixed(3)}`
      + (index === result.decisive ? " (decides)" : "");
    return item;
  }));
  const count = result.faces.length;
  $("faces-summary").textContent = result.decided_by === "face"
    ? `${count} face${count === 1 ? "" : "s"} found; face ${result.decisive + 1}, the most likely fake, decides.`
    : result.decided_by === "whole-image" ? "No face found: the whole image decides." : "No face found: no verdict.";
  $("faces-summary").hidden = false;
  $("face-list").hidden = count === 0;
  $("face-boxes").hidden = count === 0;
  document.body.dataset.faces = "shown";
}

function showResult(result) {
  showFaces(result);
  const decided = result.label !== null;  // null: faces asked, none found, and no whole-image fallback
  $("label").textContent = decided ? result.label : "No verdict";
  $("label").dataset.label = decided ? result.label.toLowerCase() : "";
  $("score").textContent = decided ? percent(result.score) : "";
  const fake = result.fake_probability;
  $("fake-meter").hidden = fake === null;
  if (fake !== null) {
    $("fake-bar").style.width = `${(100 * fake).toFixed(1)}%`;
    $("fake-bar-track").setAttribute("aria-valuenow", (100 * fake).toFixed(1));
    $("fake-text").textContent = `p(fake) ${percent(fake)}`;
  }
  const list = $("probabilities");
  list.replaceChildren(...Object.entries(result.probabilities || {}).map(([label, probability]) => {
    const item = document.createElement("li");
    item.textContent = `${label}: ${percent(probability)}`;
    return item;
  }));
  $("elapsed").textContent = `${result.model.variant} · ${result.elapsed_ms.toFixed(0)} ms on the server`;
  $("result").hidden = false;
}

function showError(message) {
  $("error").textContent = message;  // textContent: a file name in the message can't inject markup
  $("error").hidden = false;
}

function setEvidence(state) {
  document.body.dataset.evidence = state;
  $("evidence-busy").hidden = state !== "loading";
  const shown = state === "shown";
  $("heat").hidden = !shown;
  $("legend").hidden = !shown;
  if (state !== "error") $("evidence-error").hidden = true;
}

function showEvidence() {
  const explanation = evidence.explanation;
  const heatmap = explanation.heatmap;
  $("heat").src = heatmap.png;
  const last = heatmap.colours.length - 1;
  const stops = heatmap.colours.map((colour, index) => `${colour} ${(100 * index / last).toFixed(1)}%`);
  $("legend-bar").style.background = `linear-gradient(90deg, ${stops.join(", ")})`;
  $("legend-max").textContent = heatmap.vmax.toPrecision(2);
  $("legend-caption").textContent = explanation.heat_max > 0
    ? `Evidence for ${explanation.target}: how much p(${explanation.target}) drops when a region is hidden `
      + `(${explanation.method}, ${explanation.model_passes} passes, ${explanation.elapsed_ms.toFixed(0)} ms)`
    : `No region's hiding lowers p(${explanation.target}): nothing to show`;
  setEvidence("shown");
}

async function postImage(url, file, verb) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch(url, { method: "POST", body: form });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const reason = body && body.error ? `${body.error.type}: ${body.error.message}` : response.statusText;
    const error = new Error(`Could not ${verb} ${file.name} (HTTP ${response.status}) — ${reason}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function seconds(value) {
  return `${value.toFixed(value < 10 ? 1 : 0)} s`;
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS($("timeline").namespaceURI, name);  // the page's SVG namespace
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function clearVideo() {
  $("video-result").hidden = true;
  $("timeline").replaceChildren();
  $("track-list").replaceChildren();
  document.body.dataset.video = "off";
}

function drawTimeline(result) {
  // Attributes only (no style attributes): the page's CSP allows no inline style. Colours come from style.css.
  const times = result.timeline.map(([time]) => time);
  const span = Math.max(result.duration || 0, ...times, 1e-3);
  const x = (time) => PLOT.left + (PLOT.right - PLOT.left) * time / span;
  const y = (probability) => PLOT.bottom - (PLOT.bottom - PLOT.top) * probability;
  const svg = $("timeline");
  svg.dataset.span = String(span);
  svg.dataset.plot = [PLOT.left, PLOT.top, PLOT.right, PLOT.bottom].join(",");
  const parts = [];
  for (const [start, end] of result.suspicious_ranges) {
    const width = Math.max(x(end) - x(start), 3);  // a range of one frame at the clip's end still shows
    parts.push(svgElement("rect", { class: "suspicious", x: x(start), y: PLOT.top, width,
                                    height: PLOT.bottom - PLOT.top, "data-start": start, "data-end": end }));
  }
  for (const probability of [0, 0.5, 1]) {
    parts.push(svgElement("line", { class: probability === SUSPICIOUS ? "threshold" : "grid", x1: PLOT.left,
                                    x2: PLOT.right, y1: y(probability), y2: y(probability) }));
    parts.push(svgElement("text", { class: "axis", x: PLOT.left - 6, y: y(probability) + 4, "text-anchor": "end" },
                          probability.toFixed(1)));
  }
  for (const time of [0, span / 2, span]) {
    parts.push(svgElement("text", { class: "axis", x: x(time), y: PLOT.bottom + 16, "text-anchor": "middle" },
                          seconds(time)));
  }
  parts.push(svgElement("text", { class: "axis", x: (PLOT.left + PLOT.right) / 2, y: PLOT.bottom + 32,
                                  "text-anchor": "middle" }, "time · p(fake) per track"));
  result.tracks.forEach((track, index) => {
    const points = track.frames.filter((frame) => frame.fake_probability !== null);
    const colour = `track-${index % 6}`;
    const decisive = track.id === result.decisive_track ? " decisive" : "";
    parts.push(svgElement("polyline", { class: `track ${colour}${decisive}`, "data-track": track.id,
                                        points: points.map((frame) => `${x(frame.time)},${y(frame.fake_probability)}`)
                                          .join(" ") }));
    for (const frame of points) {
      const dot = svgElement("circle", { class: `point ${colour}`, cx: x(frame.time), cy: y(frame.fake_probability),
                                         r: 3.5, "data-track": track.id, "data-time": frame.time,
                                         "data-probability": frame.fake_probability });
      dot.append(svgElement("title", {}, `${trackName(track)} at ${seconds(frame.time)}: p(fake) `
                                         + percent(frame.fake_probability)));
      parts.push(dot);
    }
  });
  svg.replaceChildren(...parts);
}

function trackName(track) {
  return track.kind === "face" ? `Face track ${track.id}` : "Whole frames";
}

function showVideo(result) {
  const count = result.sampled_frames;
  const decided = { "face track": `face track ${result.decisive_track}, the most suspicious, decides`,
                    "whole frames": "no face found: the whole frames decide", none: "no frame decoded: no verdict" };
  $("video-summary").textContent = `Video ${seconds(result.duration)}, ${count} frame${count === 1 ? "" : "s"} `
    + `sampled at ${result.fps} per second; ${decided[result.decided_by] || result.decided_by}.`;
  const ranges = result.suspicious_ranges.map(([start, end]) => `${seconds(start)} – ${seconds(end)}`);
  $("video-ranges").textContent = ranges.length ? `Suspicious: ${ranges.join(", ")}`
    : `Nothing suspicious: no sampled frame reaches p(fake) ${percent(SUSPICIOUS)}`;
  $("video-ranges").dataset.count = String(ranges.length);
  drawTimeline(result);
  $("track-list").replaceChildren(...result.tracks.map((track, index) => {
    const item = document.createElement("li");
    item.className = `track-${index % 6}`;
    item.textContent = `${trackName(track)}: ${faceVerdict(track.verdict)} over ${track.frames.length} frame`
      + `${track.frames.length === 1 ? "" : "s"}${track.id === result.decisive_track ? " (decides)" : ""}`;
    return item;
  }));
  $("video-result").hidden = false;
  document.body.dataset.video = "shown";
}

function isVideoType(file) {
  return file.type.startsWith("video/");
}

async function explain(file) {
  const request = ++evidenceRequest;
  setEvidence("loading");
  try {
    const body = await postImage("api/v1/explain?target=predicted", file, "explain");
    if (request !== evidenceRequest) return;
    evidence = body;  // kept even if the toggle went off meanwhile: turning it on again shows it at once
    if ($("evidence").checked) showEvidence(); else setEvidence("off");
  } catch (error) {
    if (request !== evidenceRequest) return;
    $("evidence-error").textContent = error.message;
    $("evidence-error").hidden = false;
    setEvidence("error");
  }
}

function evidenceToggled() {
  if (document.body.dataset.video === "shown") return;  // a clip has no heat map
  if (!$("evidence").checked) {
    setEvidence("off");
  } else if (evidence) {
    showEvidence();
  } else if (currentFile && document.body.dataset.state === "done" && document.body.dataset.evidence !== "loading") {
    explain(currentFile);
  }
}

async function classifyVideo(file) {
  const result = await postImage("api/v1/video", file, "classify");
  showResult(result);
  showVideo(result);
}

async function classify(file) {
  // A file the browser types as a video goes to api/v1/video. Any other goes to api/v1/predict, and one the image
  // path can't read (415) goes to api/v1/video next: the server reads the content, so a clip with an image's name
  // or no type is still a video. Should that fail too, the image's error is the one shown.
  $("result").hidden = true;
  $("error").hidden = true;
  clearFaces();
  clearVideo();
  currentFile = file;
  evidence = null;
  evidenceRequest++;
  setEvidence("off");
  showPreview(file);
  setState("loading");
  try {
    if (isVideoType(file)) {
      await classifyVideo(file);
    } else {
      let result;
      try {
        result = await postImage(predictUrl(), file, "classify");
      } catch (error) {
        if (error.status !== 415) throw error;
        await classifyVideo(file).catch(() => { throw error; });
      }
      if (result) {
        showResult(result);
        if ($("evidence").checked) explain(file);
      }
    }
    setState("done");
  } catch (error) {
    showError(error.message);
    setState("error");
  }
}

function setUp() {
  const input = $("file");
  $("preview").addEventListener("error", () => { $("preview").hidden = true; });  // not an image the browser shows
  $("preview").addEventListener("load", () => { $("preview").hidden = false; });
  $("evidence").addEventListener("change", evidenceToggled);
  $("faces").addEventListener("change", () => {
    // The same photo, asked anew; not a clip: the server's video stage looks for faces whenever it can.
    if (currentFile && document.body.dataset.state !== "loading" && document.body.dataset.video !== "shown") {
      classify(currentFile);
    }
  });
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files.length) classify(input.files[0]);
    input.value = "";  // choosing the same file again still fires change
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) classify(file);
  });
  loadModelInfo();
}

setUp();
