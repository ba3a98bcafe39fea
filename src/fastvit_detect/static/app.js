"use strict";
// The upload page: pick or drop an image, preview it, POST it to api/v1/predict, show the verdict or the error.
// Relative URLs, so the page works wherever the app is mounted. body[data-state] tells tests where we are.

const $ = (id) => document.getElementById(id);
let previewUrl = null;

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

function showResult(result) {
  $("label").textContent = result.label;
  $("label").dataset.label = result.label.toLowerCase();
  $("score").textContent = percent(result.score);
  const fake = result.fake_probability;
  $("fake-meter").hidden = fake === null;
  if (fake !== null) {
    $("fake-bar").style.width = `${(100 * fake).toFixed(1)}%`;
    $("fake-bar-track").setAttribute("aria-valuenow", (100 * fake).toFixed(1));
    $("fake-text").textContent = `p(fake) ${percent(fake)}`;
  }
  const list = $("probabilities");
  list.replaceChildren(...Object.entries(result.probabilities).map(([label, probability]) => {
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

async function classify(file) {
  $("result").hidden = true;
  $("error").hidden = true;
  showPreview(file);
  setState("loading");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("api/v1/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const reason = body && body.error ? `${body.error.type}: ${body.error.message}` : response.statusText;
      throw new Error(`Could not classify ${file.name} (HTTP ${response.status}) — ${reason}`);
    }
    showResult(body);
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
