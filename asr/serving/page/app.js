// The page of `asr serve`: transcribe an uploaded file or a microphone recording through the
// server's API, or caption the microphone live, show the words, light up the word being heard
// while the audio plays, and offer the transcript as SRT and VTT subtitles.
//
// The API calls are the ones any client makes: GET /v1/models, POST /v1/audio/transcriptions
// (response_format=verbose_json with word timestamps) and POST /subtitles (the server's
// subtitle writer, so the files match `asr transcribe --format srt vtt`). A recording is kept
// as raw samples and sent as a 16-bit WAV file, which every server-side reader takes.
// Live captions speak OpenAI's Realtime transcription events over the WebSocket
// /v1/realtime?intent=transcription (asr/serving/live.py): the microphone's samples go out as
// base64 16-bit PCM at the audio context's rate, about 100 ms a message; each delta grows the
// partial caption; Stop commits the audio, and the completed transcript (with word times)
// replaces the caption. A browser cannot set headers on a WebSocket, so the API key travels as
// the subprotocol `openai-insecure-api-key.KEY`, as OpenAI's browser clients send it.
// `document.body.dataset.state` says where the page is: loading, ready, recording, live, busy,
// done or error; while recording or live, `dataset.recorded` counts the seconds of audio
// captured (the microphone's clock), and `dataset.sent` is the length of the last audio sent.
"use strict";

const $ = (id) => document.getElementById(id);
const page = { words: [], current: -1, audioUrl: null, recorder: null, live: null };

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

// The microphone through the recorder worklet: `onBlock(samples)` for each block of float32
// mono samples at `context.sampleRate`, `shown(seconds)` every tenth of a second captured.
async function openMicrophone(onBlock, shown) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const context = new AudioContext();
  await context.audioWorklet.addModule("/page/recorder.js");
  const node = new AudioWorkletNode(context, "recorder");
  const mic = { stream, context, blocks: [], samples: 0, tenths: -1 };
  node.port.onmessage = (event) => {
    mic.blocks.push(event.data);
    mic.samples += event.data.length;
    onBlock(event.data);
    const tenths = Math.floor((10 * mic.samples) / context.sampleRate);
    if (tenths !== mic.tenths) {
      mic.tenths = tenths;
      document.body.dataset.recorded = (tenths / 10).toFixed(1);
      shown((tenths / 10).toFixed(1));
    }
  };
  context.createMediaStreamSource(stream).connect(node);
  node.connect(context.destination); // keeps the node running; it outputs silence
  document.body.dataset.recorded = "0.0";
  return mic;
}

// Stop capturing; the blocks captured so far stay in `mic.blocks`.
async function closeMicrophone(mic) {
  for (const track of mic.stream.getTracks()) track.stop();
  if (mic.context.state !== "closed") await mic.context.close();
  document.body.dataset.sent = String(mic.samples / mic.context.sampleRate);
}

function setButton(id, active, label) {
  $(id).textContent = label;
  $(id).classList.toggle("recording", active);
  $(id === "record" ? "live" : "record").disabled = active;
}

async function startRecording() {
  let mic;
  try {
    mic = await openMicrophone(() => {}, (seconds) => {
      if (page.recorder) $("status").textContent = `Recording… ${seconds} s; press Stop to transcribe.`;
    });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`, "error");
    return;
  }
  page.recorder = mic;
  setButton("record", true, "Stop");
  setStatus("Recording… press Stop to transcribe.", "recording");
}

async function stopRecording() {
  const mic = page.recorder;
  page.recorder = null;
  await closeMicrophone(mic);
  setButton("record", false, "Record");
  await transcribe(wavFile(mic.blocks, mic.context.sampleRate), "recording.wav");
}

function realtimeSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const model = encodeURIComponent($("model").value);
  const key = $("key").value.trim();
  const protocols = ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])];
  return new WebSocket(`${scheme}//${location.host}/v1/realtime?intent=transcription&model=${model}`, protocols);
}

async function startLive() {
  const live = { socket: null, mic: null, pending: [], text: "", stopping: false, done: false };
  try {
    live.socket = realtimeSocket();
  } catch (err) {
    setStatus(`Live captions: ${err.message}`, "error");
    return;
  }
  page.live = live;
  live.socket.onmessage = (message) => liveEvent(live, JSON.parse(message.data));
  live.socket.onclose = (event) => liveClosed(live, event);
  try {
    live.mic = await openMicrophone((block) => {
      live.pending.push(block);
      if (live.mic && live.pending.reduce((n, b) => n + b.length, 0) >= live.mic.context.sampleRate / 10) {
        sendAudio(live);
      }
    }, (seconds) => {
      if (!live.stopping && !live.done) $("status").textContent = `Live… ${seconds} s; press Stop to finish.`;
    });
  } catch (err) {
    page.live = null;
    live.socket.close();
    setStatus(`No microphone: ${err.message}`, "error");
    return;
  }
  showWords([]);
  for (const id of ["srt", "vtt"]) $(id).hidden = true;
  const caption = document.createElement("span");
  caption.className = "partial";
  $("transcript").replaceChildren(caption);
  setButton("live", true, "Stop");
  setStatus("Live… speak; the captions follow. Press Stop to finish.", "live");
}

// The audio captured since the last message, as one input_audio_buffer.append (once the
// socket is open: until then it waits in `live.pending`).
function sendAudio(live) {
  if (live.socket.readyState !== WebSocket.OPEN || live.pending.length === 0) return;
  if (!live.formatSent) {
    live.formatSent = true;
    const format = { type: "audio/pcm", rate: live.mic.context.sampleRate };
    live.socket.send(JSON.stringify({ type: "transcription_session.update", session: { input_audio_format: format } }));
  }
  const count = live.pending.reduce((n, b) => n + b.length, 0);
  const bytes = new Uint8Array(2 * count);
  const view = new DataView(bytes.buffer);
  let offset = 0;
  for (const block of live.pending) {
    for (const x of block) {
      view.setInt16(offset, Math.round(Math.max(-1, Math.min(1, x)) * 32767), true); // as wavFile
      offset += 2;
    }
  }
  live.pending = [];
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  live.socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: btoa(binary) }));
}

async function stopLive() {
  const live = page.live;
  if (live.stopping) return;
  live.stopping = true;
  await closeMicrophone(live.mic);
  sendAudio(live);
  setButton("live", false, "Live");
  $("live").disabled = true; // until the transcript arrives
  if (live.socket.readyState !== WebSocket.OPEN) return;
  live.socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  setStatus("Finishing the transcript…", "busy");
}

async function liveEvent(live, event) {
  if (event.type === "conversation.item.input_audio_transcription.delta") {
    live.text += event.delta;
    const caption = $("transcript").querySelector(".partial");
    if (caption) caption.textContent = live.text;
  } else if (event.type === "conversation.item.input_audio_transcription.completed") {
    live.done = true;
    live.socket.close(1000);
    const rate = live.mic.context.sampleRate;
    if (page.audioUrl) URL.revokeObjectURL(page.audioUrl);
    page.audioUrl = URL.createObjectURL(wavFile(live.mic.blocks, rate));
    $("player").src = page.audioUrl;
    showWords(event.words);
    try {
      await offerSubtitles(event.words, "live");
    } catch (err) {
      setStatus(`Subtitles: ${err.message}`, "error");
      return;
    }
    const count = event.words.length;
    setStatus(`live: ${count} word${count === 1 ? "" : "s"} in ${event.usage.seconds.toFixed(1)} s of audio.`, "done");
  } else if (event.type === "error") {
    setStatus(`Live captions: ${event.error.message}`, "error");
    if (live.stopping) live.socket.close(1000); // nothing more will come
  }
}

async function liveClosed(live, event) {
  if (page.live === live) page.live = null;
  $("live").disabled = false;
  if (live.done) return;
  if (live.mic && !live.stopping) await closeMicrophone(live.mic);
  setButton("live", false, "Live");
  if (document.body.dataset.state !== "error") {
    setStatus(`Live captions stopped: ${event.reason || `the connection closed (${event.code})`}`, "error");
  }
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
$("live").addEventListener("click", () => (page.live ? stopLive() : startLive()));
$("key").addEventListener("change", loadModels);
$("player").addEventListener("timeupdate", highlight);
$("player").addEventListener("seeked", highlight);
$("player").addEventListener("play", () => requestAnimationFrame(followPlayback));
loadModels();
