// MAIST drawing page: pointer strokes on a canvas, debounced POST of the PNG to /predict,
// top-5 bars and every layer's activations from the answer.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusBox = document.getElementById("status");
const top5 = document.getElementById("top5");
const layersBox = document.getElementById("layers");
const timing = document.getElementById("timing");

const PEN_WIDTH = 16;        // px on the 280-px canvas: strokes about as thick, relative to the
                             // character, as the ETL8G writers' pens
const DEBOUNCE_MS = 150;     // predict at most this often while drawing
const LAYER_NOTES = {
  input: "what the network sees",
  filters: "conv1's 5×5 filters",
  conv1: "filtered images",
  relu1: "after ReLU",
  pool1: "max-pooled",
  conv2: "second convolution",
  relu2: "after ReLU",
  pool2: "max-pooled",
  weights: "class templates",
};

let drawing = false;
let inked = false;
let last = null;
let timer = null;
let inFlight = false;
let again = false;
let seq = 0;
let pending = false;

// True while a prediction is scheduled or on its way (the browser test waits on it).
window.maistBusy = () => pending || inFlight || again;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function setStatus(text, isError = false) {
  statusBox.textContent = text;
  statusBox.classList.toggle("error", isError);
}

function point(ev) {
  const r = pad.getBoundingClientRect();
  return { x: (ev.clientX - r.left) * (pad.width / r.width), y: (ev.clientY - r.top) * (pad.height / r.height) };
}

function dot(p) {
  ctx.beginPath();
  ctx.arc(p.x, p.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
  ctx.fill();
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  drawing = true;
  last = point(ev);
  ctx.fillStyle = "#000";
  dot(last);
  inked = true;
  schedule();
});

pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  ev.preventDefault();
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  ctx.strokeStyle = "#000";
  ctx.lineWidth = PEN_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const e of events.length ? events : [ev]) {
    const p = point(e);
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }
  schedule();
});

function endStroke(ev) {
  if (!drawing) return;
  drawing = false;
  if (pad.hasPointerCapture && pad.hasPointerCapture(ev.pointerId)) pad.releasePointerCapture(ev.pointerId);
  schedule(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  seq++;              // answers to earlier drawings are ignored
  top5.innerHTML = "";
  timing.textContent = "";
  layersBox.innerHTML = '<p style="color: var(--muted)">(appear once you draw)</p>';
  setStatus("Draw a kana.");
});

document.getElementById("file").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (file) send(file, "your picture");
});

function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(timer);
  pending = true;
  timer = setTimeout(predictCanvas, delay);
}

function predictCanvas() {
  pending = false;
  if (inFlight) { again = true; return; }
  inFlight = true;
  pad.toBlob((blob) => send(blob, "the drawing"), "image/png");
}

async function send(blob, what) {
  const mine = ++seq;
  inFlight = true;
  setStatus(`Reading ${what}…`);
  try {
    // The server takes image/* (it reads the bytes, not the label) or JSON, and refuses other types
    // (what a form on another site could send); a file the browser cannot type goes as image/png.
    const type = blob.type.startsWith("image/") ? blob.type : "image/png";
    const res = await fetch("predict", { method: "POST", headers: { "Content-Type": type }, body: blob });
    let doc;
    try { doc = await res.json(); } catch (e) { doc = { error: `the server answered ${res.status} ${res.statusText}` }; }
    if (mine !== seq) return;      // cleared or redrawn meanwhile
    if (!res.ok) {
      setStatus(`${res.status}: ${doc.error || res.statusText}`, true);
      top5.innerHTML = "";
      return;
    }
    showTop5(doc.top5);
    showLayers(doc.layers || []);
    timing.textContent = `${doc.ms} ms on the server`;
    setStatus(`Read ${what}.`);
  } catch (err) {
    if (mine === seq) setStatus(`The server cannot be reached (${err.message}).`, true);
  } finally {
    inFlight = false;
    if (again) { again = false; schedule(0); }
  }
}

function showTop5(rows) {
  top5.innerHTML = "";
  for (const [kana, p] of rows) {
    const li = document.createElement("li");
    const k = document.createElement("span"); k.className = "kana"; k.textContent = kana;
    const bar = document.createElement("span"); bar.className = "bar";
    const fill = document.createElement("span"); fill.style.width = `${(100 * p).toFixed(1)}%`; bar.appendChild(fill);
    const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(k, bar, pct);
    top5.appendChild(li);
  }
}

function showLayers(layers) {
  layersBox.innerHTML = "";
  for (const layer of layers) {
    const row = document.createElement("div"); row.className = "layer"; row.dataset.layer = layer.name;
    const name = document.createElement("div"); name.className = "name"; name.textContent = layer.name;
    const note = document.createElement("small"); note.textContent = LAYER_NOTES[layer.name] || ""; name.appendChild(note);
    const img = document.createElement("img"); img.src = layer.png; img.alt = `${layer.name} activations`;
    row.append(name, img);
    layersBox.appendChild(row);
  }
}

clearPad();
