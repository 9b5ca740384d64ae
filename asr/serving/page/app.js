// The page of `asr serve`: transcribe an uploaded file or a microphone recording through the
// server's API, show the words, light up the word being heard while the audio plays, and offer
// the transcript as SRT and VTT subtitles.
//
// The API calls are the ones any client makes: GET /v1/models, POST /v1/audio/transcriptions
// (response_format=verbose_json with word timestamps) and POST /subtitles (the server's
// subtitle writer, so the files match `asr transcribe --format srt vtt`). A recording is kept
// as raw samples and sent as a 16-bit WAV file, which every server-side reader takes.
// `document.body.dataset.state` says where the page is: loading, ready, recording, busy,
// done or error; while recording, `dataset.recorded` counts the seconds of audio captured
// (the microphone's clock), and `dataset.sent` is the length of the last recording sent.
"use strict";

const $ = (id) => document.getElementById(id);
const page = { words: [], current: -1, audioUrl: null, recorder: null };

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

async function api(path, options = {}) {
  const key = $("key").value.trim();
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch (_) {
      // not our JSON error: keep the status line
    }
    throw new Error(message);
  }
  return response;
}

async function loadModels() {
  try {
    const { data } = await (await api("/v1/models")).json();
    $("model").replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    setStatus("Choose an audio file, or record from the microphone.", "ready");
  } catch (err) {
    setStatus(`Cannot list the models: ${err.message}`, "error");
  }
}

async function transcribe(blob, name) {
  if (page.audioUrl) URL.revokeObjectURL(page.audioUrl);
  page.audioUrl = URL.createObjectURL(blob);
  $("player").src = page.audioUrl;
  showWords([]);
  for (const id of ["srt", "vtt"]) $(id).hidden = true;
  const form = new FormData();
  form.append("file", blob, name);
  form.append("model", $("model").value);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "word");
  form.append("timestamp_granularities[]", "segment");
  setStatus(`Transcribing ${name}…`, "busy");
  try {
    const result = await (await api("/v1/audio/transcriptions", { method: "POST", body: form })).json();
    showWords(result.words);
    await offerSubtitles(result.words, name.replace(/\.[^.]*$/, ""));
    const count = result.words.length;
    setStatus(`${name}: ${count} word${count === 1 ? "" : "s"} in ${result.duration.toFixed(1)} s of audio.`, "done");
  } catch (err) {
    setStatus(`${name}: ${err.message}`, "error");
  }
}

function showWords(words) {
  page.words = words;
  page.current = -1;
  const nodes = [];
  words.forEach((w, i) => {
    const span = document.createElement("span");
    span.className = w.confidence < 0.5 ? "word unsure" : "word";
    span.textContent = w.word;
    span.title = `${w.start.toFixed(2)}–${w.end.toFixed(2)} s, confidence ${w.confidence.toFixed(2)}`;
    span.addEventListener("click", () => {
      $("player").currentTime = w.start;
      $("player").play();
    });
    if (i > 0) nodes.push(document.createTextNode(" "));
    nodes.push(span);
  });
  $("transcript").replaceChildren(...nodes);
}

async function offerSubtitles(words, stem) {
  for (const format of ["srt", "vtt"]) {
    const response = await api("/subtitles", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ words, format }),
    });
    const link = $(format);
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(await response.blob());
    link.download = `${stem || "transcript"}.${format}`;
    link.hidden = false;
  }
}

// The word being heard: the last one that starts at or before the time (binary search, since
// a long transcript has thousands of words), if the time is before its end.
function wordAt(time) {
  let lo = 0;
  let hi = page.words.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (page.words[mid].start <= time) {
      found = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return found >= 0 && time < page.words[found].end ? found : -1;
}

function highlight() {
  const index = wordAt($("player").currentTime);
  if (index === page.current) return;
  const spans = $("transcript").querySelectorAll(".word");
  if (page.current >= 0 && spans[page.current]) spans[page.current].classList.remove("now");
  if (index >= 0 && spans[index]) spans[index].classList.add("now");
  page.current = index;
}

function followPlayback() {
  highlight();
  if (!$("player").paused) requestAnimationFrame(followPlayback);
}

async function startRecording() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`, "error");
    return;
  }
  const context = new AudioContext();
  await context.audioWorklet.addModule("/page/recorder.js");
  const node = new AudioWorkletNode(context, "recorder");
  const blocks = [];
  let samples = 0;
  let shown = -1; // tenths of a second last shown
  node.port.onmessage = (event) => {
    blocks.push(event.data);
    samples += event.data.length;
    const tenths = Math.floor((10 * samples) / context.sampleRate);
    if (tenths !== shown && page.recorder) {
      shown = tenths;
      document.body.dataset.recorded = (tenths / 10).toFixed(1);
      $("status").textContent = `Recording… ${(tenths / 10).toFixed(1)} s; press Stop to transcribe.`;
    }
  };
  context.createMediaStreamSource(stream).connect(node);
  node.connect(context.destination); // keeps the node running; it outputs silence
  page.recorder = { stream, context, blocks };
  document.body.dataset.recorded = "0.0";
  $("record").textContent = "Stop";
  $("record").classList.add("recording");
  setStatus("Recording… press Stop to transcribe.", "recording");
}

async function stopRecording() {
  const { stream, context, blocks } = page.recorder;
  page.recorder = null;
  for (const track of stream.getTracks()) track.stop();
  const rate = context.sampleRate;
  await context.close();
  $("record").textContent = "Record";
  $("record").classList.remove("recording");
  const count = blocks.reduce((n, block) => n + block.length, 0);
  document.body.dataset.sent = String(count / rate);
  await transcribe(wavFile(blocks, rate), "recording.wav");
}

// Float32 blocks -> a mono 16-bit PCM WAV file.
function wavFile(blocks, rate) {
  const count = blocks.reduce((n, block) => n + block.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * count));
  const ascii = (offset, text) => {
    for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * count, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, 2 * count, true);
  let offset = 44;
  for (const block of blocks) {
    for (const x of block) {
      view.setInt16(offset, Math.round(Math.max(-1, Math.min(1, x)) * 32767), true);
      offset += 2;
    }
  }
  return new Blob([view.buffer], { type: "audio/wav" });
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) transcribe(file, file.name);
});
$("record").addEventListener("click", () => (page.recorder ? stopRecording() : startRecording()));
$("key").addEventListener("change", loadModels);
$("player").addEventListener("timeupdate", highlight);
$("player").addEventListener("seeked", highlight);
$("player").addEventListener("play", () => requestAnimationFrame(followPlayback));
loadModels();
