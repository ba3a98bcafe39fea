"use strict";
// The upload page: pick or drop an image, preview it, POST it to api/v1/predict, show the verdict or the error.
// With "Show evidence" on, it also POSTs the image to api/v1/explain and lays the returned heat map over the
// preview. With "Find faces" on, it asks api/v1/predict?faces=1 and draws each face's box with its verdict over the
// preview. Relative URLs, so the page works wherever the app is mounted. body[data-state], body[data-evidence]
// and body[data-faces] tell tests where we are.

const $ = (id) => document.getElementById(id);
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
    throw new Error(`Could not ${verb} ${file.name} (HTTP ${response.status}) — ${reason}`);
  }
  return body;
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
  if (!$("evidence").checked) {
    setEvidence("off");
  } else if (evidence) {
    showEvidence();
  } else if (currentFile && document.body.dataset.state === "done" && document.body.dataset.evidence !== "loading") {
    explain(currentFile);
  }
}

async function classify(file) {
  $("result").hidden = true;
  $("error").hidden = true;
  clearFaces();
  currentFile = file;
  evidence = null;
  evidenceRequest++;
  setEvidence("off");
  showPreview(file);
  setState("loading");
  try {
    showResult(await postImage(predictUrl(), file, "classify"));
    setState("done");
    if ($("evidence").checked) explain(file);
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
    if (currentFile && document.body.dataset.state !== "loading") classify(currentFile);  // the same photo, asked anew
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
