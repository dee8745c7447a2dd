// Checkpoint Registry web UI: sortable tables, API key, upload with progress, streamed generation.
// Plain browser JavaScript, no build step. Text from the server is inserted with textContent.
"use strict";

const KEY_STORAGE = "ckpt.apiKey";

function authHeaders() {
  const key = window.localStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: "Bearer " + key } : {};
}

function errorMessage(status, text) {
  try {
    const body = JSON.parse(text);
    const error = body.error;
    if (error && typeof error === "object" && error.message) return error.message;
    if (typeof error === "string") return error;
  } catch (ignored) { /* not JSON */ }
  return "HTTP " + status + (text ? ": " + text.slice(0, 300) : "");
}

// --- sortable tables -------------------------------------------------------------------------

function cellValue(row, index, numeric) {
  const cell = row.cells[index];
  const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
  if (!numeric) return raw.toLowerCase();
  const number = parseFloat(raw);
  return Number.isNaN(number) ? -Infinity : number;
}

function sortBy(table, header) {
  const index = Array.from(header.parentNode.children).indexOf(header);
  const numeric = header.dataset.sort === "number";
  const ascending = !header.classList.contains("sorted-asc");
  table.querySelectorAll("th").forEach((th) => th.classList.remove("sorted-asc", "sorted-desc"));
  header.classList.add(ascending ? "sorted-asc" : "sorted-desc");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const left = cellValue(a, index, numeric);
    const right = cellValue(b, index, numeric);
    const order = left < right ? -1 : left > right ? 1 : 0;
    return ascending ? order : -order;
  });
  rows.forEach((row) => body.appendChild(row));
}

function setUpSorting() {
  document.querySelectorAll("table.sortable th[data-sort]").forEach((header) => {
    header.addEventListener("click", () => sortBy(header.closest("table"), header));
  });
}

// --- API key -----------------------------------------------------------------------------------

// Pages and downloads are plain navigations, which carry no bearer header: the server also
// accepts the key from this cookie, for GET requests only.
function setKeyCookie(value, extra) {
  const secure = window.location.protocol === "https:" ? "; Secure" : "";
  document.cookie = "ckpt_api_key=" + value + "; path=/; SameSite=Strict" + secure + extra;
}

function setUpApiKey() {
  const form = document.getElementById("api-key-form");
  if (!form) return;
  const state = document.getElementById("api-key-state");
  const show = () => {
    state.textContent = window.localStorage.getItem(KEY_STORAGE) ? "key set" : "no key";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = form.elements.key.value.trim();
    if (key) {
      window.localStorage.setItem(KEY_STORAGE, key);
      setKeyCookie(encodeURIComponent(key), "");
    }
    form.elements.key.value = "";
    show();
  });
  document.getElementById("api-key-clear").addEventListener("click", () => {
    window.localStorage.removeItem(KEY_STORAGE);
    setKeyCookie("", "; max-age=0");
    show();
  });
  show();
}

// --- upload ------------------------------------------------------------------------------------

async function refreshCheckpointTable() {
  const response = await fetch(window.location.href, { headers: authHeaders() });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.querySelector("#checkpoints tbody");
  const current = document.querySelector("#checkpoints tbody");
  if (fresh && current) current.replaceWith(fresh);
}

function showUploaded(result, checkpoint, created) {
  result.textContent = created ? "Stored " : "Already stored as ";
  const link = document.createElement("a");
  link.href = "/ui/checkpoints/" + encodeURIComponent(checkpoint.id);
  link.id = "upload-link";
  link.textContent = checkpoint.ref;
  result.appendChild(link);
  result.appendChild(document.createTextNode(" — verification queued."));
}

function upload(form, file, config) {
  const progress = document.getElementById("upload-progress");
  const result = document.getElementById("upload-result");
  const button = document.getElementById("upload-submit");
  const body = new FormData();
  body.append("file", file, file.name);
  const name = form.elements.name.value.trim();
  const metadata = form.elements.metadata.value.trim();
  if (name) body.append("name", name);
  if (metadata) body.append("metadata", metadata);
  if (config) body.append("config", config);
  const request = new XMLHttpRequest();
  request.open("POST", "/v1/checkpoints");
  Object.entries(authHeaders()).forEach(([header, value]) => request.setRequestHeader(header, value));
  progress.hidden = false;
  progress.value = 0;
  button.disabled = true;
  result.className = "";
  result.textContent = "Uploading " + file.name + "…";
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) progress.value = (100 * event.loaded) / event.total;
  });
  request.upload.addEventListener("load", () => {
    progress.value = 100;
    result.textContent = "Uploaded; the registry is inspecting " + file.name + "…";
  });
  request.addEventListener("load", () => {
    button.disabled = false;
    if (request.status === 200 || request.status === 201) {
      showUploaded(result, JSON.parse(request.responseText), request.status === 201);
      refreshCheckpointTable();
    } else {
      result.className = "error";
      result.textContent = errorMessage(request.status, request.responseText);
    }
  });
  request.addEventListener("error", () => {
    button.disabled = false;
    result.className = "error";
    result.textContent = "The upload failed: the connection was lost.";
  });
  request.send(body);
}

function setUpUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = document.getElementById("upload-file");
  const zone = document.getElementById("dropzone");
  const chosen = document.getElementById("upload-chosen");
  let dropped = null;
  input.addEventListener("change", () => {
    dropped = null;
    chosen.textContent = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      dropped = event.dataTransfer.files[0];
      chosen.textContent = dropped.name;
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = dropped || input.files[0];
    const result = document.getElementById("upload-result");
    if (!file) {
      result.className = "error";
      result.textContent = "Choose or drop a file first.";
      return;
    }
    const config = form.elements.config.files[0];
    if (config) {
      config.text().then((text) => upload(form, file, text));
    } else {
      upload(form, file, null);
    }
  });
}

// --- playground --------------------------------------------------------------------------------

function generationParameters(form) {
  const parameters = { do_sample: form.elements.do_sample.checked, details: true };
  const numbers = { max_new_tokens: parseInt, temperature: parseFloat, top_p: parseFloat,
                    top_k: parseInt, seed: parseInt };
  Object.entries(numbers).forEach(([field, parse]) => {
    const raw = form.elements[field].value.trim();
    if (raw !== "") parameters[field] = parse(raw, 10);
  });
  return parameters;
}

function handleEvent(payload, text, status) {
  const event = JSON.parse(payload);
  if (event.error) {
    status.className = "error";
    status.textContent = event.error;
    return true;
  }
  if (event.token && !event.token.special) {
    text.textContent += event.token.text;
    text.dataset.tokens = String(Number(text.dataset.tokens || 0) + 1);
  }
  if (event.generated_text !== null && event.generated_text !== undefined) {
    const details = event.details || {};
    status.textContent = "Done: " + (details.generated_tokens || "?") + " tokens, " +
      (details.finish_reason || "finished") + ".";
    return true;
  }
  return false;
}

async function streamGeneration(form, controller) {
  const text = document.getElementById("playground-text");
  const status = document.getElementById("playground-status");
  const ref = form.elements.ref.value;
  document.getElementById("playground-echo").textContent = form.elements.prompt.value;
  text.textContent = "";
  text.dataset.tokens = "0";
  status.className = "muted";
  status.textContent = "Generating with " + ref + "…";
  const response = await fetch("/models/" + encodeURIComponent(ref) + "/generate_stream", {
    method: "POST",
    headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
    body: JSON.stringify({ inputs: form.elements.prompt.value, parameters: generationParameters(form) }),
    signal: controller.signal,
  });
  if (!response.ok) {
    status.className = "error";
    status.textContent = errorMessage(response.status, await response.text());
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let boundary;
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5)).join("\n");
      if (data && handleEvent(data, text, status)) return;
    }
  }
}

function setUpPlayground() {
  const form = document.getElementById("playground-form");
  if (!form) return;
  const run = document.getElementById("playground-run");
  const stop = document.getElementById("playground-stop");
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    try {
      await streamGeneration(form, controller);
    } catch (error) {
      const status = document.getElementById("playground-status");
      status.className = error.name === "AbortError" ? "muted" : "error";
      status.textContent = error.name === "AbortError" ? "Stopped." : String(error);
    } finally {
      run.disabled = false;
      stop.disabled = true;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpSorting();
  setUpApiKey();
  setUpUpload();
  setUpPlayground();
});
