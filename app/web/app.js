// specvoice console: a Realtime-protocol client (the same endpoint the openai SDK uses) that shows what
// turn taking is doing. Microphone -> AudioWorklet -> pcm16 24 kHz -> input_audio_buffer.append; reply audio
// deltas are scheduled back to back on the same AudioContext. The page opts in to one non-standard server
// event, `specvoice.turn_signals` (end-of-turn probabilities, silence, chosen wait); standard clients never
// see it. `window.specvoice` exposes what happened (tests read it). No inline code: the page's CSP forbids it.
"use strict";

const RATE = 24000;
const state = (window.specvoice = {
  status: "idle", transcripts: [], replies: [], latenciesMs: [], errors: [], signals: [], bargeIns: 0,
  levelDb: null, levelMaxDb: -120, audioChunksReceived: 0, audioChunksPlayed: 0, audioMsPlayed: 0, truncations: 0, session: null,
});

const $ = (id) => document.getElementById(id);
let ws = null, ctx = null, micStream = null, captureNode = null, sessionCreated = null, formTouched = false;
let nextPlayTime = 0, playing = [], speechStoppedAt = null, currentReply = null, userSpeaking = false;
const bubbles = new Map(); // item id -> {el, text}

// --- view -------------------------------------------------------------------------------------------
function setStatus(s, kind) {
  state.status = s;
  const el = $("status");
  el.textContent = s;
  el.className = "pill " + (kind || s.split(":")[0]);
}

function bubble(id, role) {
  if (!bubbles.has(id)) {
    const hint = $("hint");
    if (hint) hint.remove();
    const el = document.createElement("div");
    el.className = "msg " + role;
    for (const cls of ["who", "text", "meta"]) {
      const part = document.createElement("div");
      part.className = cls;
      el.appendChild(part);
    }
    el.querySelector(".who").textContent = role.startsWith("user") ? "You" : "Assistant";
    $("log").appendChild(el);
    bubbles.set(id, { el, text: "" });
  }
  return bubbles.get(id);
}

function setText(b, text) {
  b.text = text;
  b.el.querySelector(".text").textContent = text;
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function addBadge(b, cls, text) {
  const span = document.createElement("span");
  span.className = "badge " + cls;
  span.textContent = text;
  b.el.querySelector(".meta").appendChild(span);
}

function logError(message) {
  state.errors.push(message);
  const el = document.createElement("div");
  el.className = "msg error";
  el.textContent = message;
  $("log").appendChild(el);
}

function gauge(id, fraction, extraClass) {
  const el = $(id);
  el.style.width = `${Math.round(100 * Math.max(0, Math.min(1, fraction)))}%`; // CSSOM: allowed by the CSP
  if (extraClass !== undefined) el.classList.toggle("done", extraClass);
}

function showLevel(db) {
  state.levelDb = db;
  gauge("level", (db + 60) / 60);
  $("level-db").textContent = db <= -90 ? "silent" : `${db.toFixed(0)} dBFS`;
}

function showVad(on) {
  userSpeaking = on;
  const el = $("vad");
  el.textContent = on ? "speech" : "silence";
  el.className = "tag" + (on ? " on" : "");
}

function showSignals(s) {
  const prob = (p) => (typeof p === "number" ? p.toFixed(2) : "—");
  $("sig-audio").textContent = prob(s.audio_p);
  $("sig-text").textContent = prob(s.text_p);
  gauge("sig-audio-bar", typeof s.audio_p === "number" ? s.audio_p : 0);
  gauge("sig-text-bar", typeof s.text_p === "number" ? s.text_p : 0);
  const silence = Math.round(s.silence_ms || 0), wait = Math.round(s.wait_ms || 0);
  $("sig-silence").textContent = wait ? `${silence} / ${wait} ms` : `${silence} ms`;
  gauge("sig-silence-bar", wait ? silence / wait : 0, wait > 0 && silence >= wait);
}

function showLatency(ms) {
  state.latenciesMs.push(ms);
  const sorted = [...state.latenciesMs].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  $("lat-last").textContent = `${ms} ms`;
  $("lat-count").textContent = String(sorted.length);
  $("lat-median").textContent = `${median} ms`;
}

// --- audio ------------------------------------------------------------------------------------------
function b64ToInt16(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Int16Array(bytes.buffer, 0, bytes.length >> 1);
}

function floatToB64(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = s < 0 ? s * 32768 : s * 32767;
  }
  const bytes = new Uint8Array(pcm.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

let levelSmoothed = -90;
function onMicFrame(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  const db = 10 * Math.log10(sum / samples.length + 1e-10);
  state.levelMaxDb = Math.max(state.levelMaxDb, db);
  levelSmoothed = db > levelSmoothed ? db : Math.max(db, levelSmoothed - 1.5); // fast up, slow down
  showLevel(levelSmoothed);
  send({ type: "input_audio_buffer.append", audio: floatToB64(samples) });
}

function send(event) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event)); }

function playChunk(reply, b64) {
  const pcm = b64ToInt16(b64);
  if (!pcm.length) return;
  const buffer = ctx.createBuffer(1, pcm.length, RATE);
  const data = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  const startAt = Math.max(ctx.currentTime + 0.02, nextPlayTime);
  if (reply.startedAt === null) reply.startedAt = startAt;
  nextPlayTime = startAt + buffer.duration;
  source.onended = () => {
    playing = playing.filter((p) => p !== source);
    if (!source.stoppedEarly) { state.audioChunksPlayed += 1; state.audioMsPlayed += buffer.duration * 1000; }
    if (!playing.length && !currentReply && state.status === "speaking") setStatus("listening");
  };
  playing.push(source);
  source.start(startAt);
}

function stopPlayback() {
  // Barge-in: silence what is queued and tell the server how much of the reply was actually heard.
  let stopped = null;
  if (lastReply && lastReply.startedAt !== null && playing.length) {
    const heardMs = Math.max(0, Math.min((ctx.currentTime - lastReply.startedAt) * 1000, lastReply.sentMs));
    send({ type: "conversation.item.truncate", item_id: lastReply.itemId, content_index: 0,
      audio_end_ms: Math.floor(heardMs) });
    state.truncations += 1;
    stopped = lastReply;
  }
  for (const source of playing) { source.stoppedEarly = true; try { source.stop(); } catch (e) { /* ended */ } }
  playing = [];
  nextPlayTime = 0;
  return stopped;
}

// --- protocol ---------------------------------------------------------------------------------------
let lastReply = null; // the reply whose audio may still be playing (it outlives response.done)

function markBargeIn(reply) {
  if (!reply || reply.bargedIn || !reply.itemId) return;
  reply.bargedIn = true;
  state.bargeIns += 1;
  $("barge-count").textContent = String(state.bargeIns);
  const b = bubble(reply.itemId, "assistant");
  b.el.classList.add("cut");
  addBadge(b, "barge", "interrupted by you");
}

function onEvent(event) {
  switch (event.type) {
    case "session.created":
    case "session.updated":
      state.session = event.session;
      if (event.type === "session.created") { fillSettings(event.session); sessionCreated && sessionCreated(); }
      break;
    case "input_audio_buffer.speech_started": {
      showVad(true);
      const cut = stopPlayback();
      markBargeIn(currentReply && currentReply.firstAudio ? currentReply : cut);
      setStatus("listening");
      break;
    }
    case "input_audio_buffer.speech_stopped":
      showVad(false);
      speechStoppedAt = performance.now();
      setStatus("thinking");
      break;
    case "specvoice.turn_signals":
      state.signals.push(event);
      showSignals(event);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const b = bubble(event.item_id, "user partial");
      setText(b, b.text + event.delta);
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const b = bubble(event.item_id, "user");
      b.el.classList.remove("partial");
      setText(b, event.transcript);
      state.transcripts.push(event.transcript);
      break;
    }
    case "response.created":
      currentReply = { id: event.response.id, itemId: null, startedAt: null, sentMs: 0, firstAudio: false, bargedIn: false };
      lastReply = currentReply;
      break;
    case "response.output_audio_transcript.delta": {
      if (currentReply) currentReply.itemId = event.item_id;
      const b = bubble(event.item_id, "assistant");
      setText(b, b.text + event.delta);
      break;
    }
    case "response.output_audio.delta": {
      if (!currentReply) break;
      currentReply.itemId = event.item_id;
      state.audioChunksReceived += 1;
      currentReply.sentMs += (b64ToInt16(event.delta).length / RATE) * 1000;
      if (!currentReply.firstAudio) {
        currentReply.firstAudio = true;
        setStatus("speaking");
        bubble(event.item_id, "assistant");
        if (speechStoppedAt !== null) {
          const ms = Math.round(performance.now() - speechStoppedAt);
          showLatency(ms);
          addBadge(bubble(event.item_id, "assistant"), "latency", `${ms} ms to first audio`);
          speechStoppedAt = null;
        }
      }
      playChunk(currentReply, event.delta);
      break;
    }
    case "response.done": {
      const item = event.response.output && event.response.output[0];
      const text = item && item.content && item.content[0] ? item.content[0].transcript : "";
      state.replies.push({ status: event.response.status, text });
      const reason = event.response.status_details && event.response.status_details.reason;
      if (event.response.status === "cancelled" && item) {
        if (reason === "turn_detected") markBargeIn(currentReply);
        else addBadge(bubble(item.id, "assistant"), "barge", "cancelled");
      }
      currentReply = null;
      if (!playing.length) setStatus("listening");
      break;
    }
    case "error":
      logError(event.error.message);
      break;
  }
}

// --- settings ---------------------------------------------------------------------------------------
function fillSettings(session) {
  if (formTouched) return; // the person's choices win over the server's defaults
  const td = session.audio && session.audio.input ? session.audio.input.turn_detection : null;
  if (td) {
    $("td-type").value = td.type;
    if (td.eagerness) $("eagerness").value = td.eagerness;
    if (td.silence_duration_ms) $("silence-cap").value = td.silence_duration_ms;
  }
  $("prompt").value = session.instructions || "";
  syncSettingsForm();
}

function syncSettingsForm() {
  $("eagerness").disabled = $("td-type").value !== "semantic_vad";
}

function turnDetection() {
  const td = { type: $("td-type").value };
  if (td.type === "semantic_vad") td.eagerness = $("eagerness").value;
  const cap = parseInt($("silence-cap").value, 10);
  if (Number.isFinite(cap) && cap > 0) td.silence_duration_ms = cap;
  return td;
}

function settingsUpdate(withFormats) {
  const session = { type: "realtime", specvoice: { turn_signals: true },
    audio: { input: { turn_detection: turnDetection() } } };
  if (withFormats) {
    session.audio.input.format = { type: "audio/pcm", rate: RATE };
    session.audio.output = { format: { type: "audio/pcm", rate: RATE } };
  }
  const prompt = $("prompt").value.trim();
  if (state.session && prompt !== (state.session.instructions || "").trim()) session.instructions = prompt;
  return { type: "session.update", session };
}

function applySettings() {
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    $("settings-note").textContent = "Applied when you press Start.";
    return;
  }
  send(settingsUpdate(false));
  $("settings-note").textContent = "Sent as session.update.";
}

// --- start / stop -----------------------------------------------------------------------------------
async function start() {
  $("start").disabled = true;
  setStatus("starting", "thinking");
  try {
    ctx = new AudioContext({ sampleRate: RATE });
    await ctx.resume(); // inside the click: allowed to make sound
    await ctx.audioWorklet.addModule("/worklet.js");
    const token = new URLSearchParams(location.search).get("token");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/realtime` + (token ? `?token=${encodeURIComponent(token)}` : "");
    const created = new Promise((resolve) => { sessionCreated = resolve; });
    ws = new WebSocket(url, ["realtime"]);
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onclose = (e) => { setStatus(e.reason ? `closed: ${e.reason}` : "closed", "idle"); stopCapture(); };
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("cannot connect")); });
    await created;
    send(settingsUpdate(true));
    // The microphone opens only once the server listens, so the first words are not lost.
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    const source = ctx.createMediaStreamSource(micStream);
    captureNode = new AudioWorkletNode(ctx, "capture");
    captureNode.port.onmessage = (m) => onMicFrame(m.data);
    source.connect(captureNode);
    showVad(false);
    setStatus("listening");
    $("stop").disabled = false;
  } catch (err) {
    logError(String(err.message || err));
    setStatus("error", "error");
    $("start").disabled = false;
  }
}

function stopCapture() {
  if (captureNode) { captureNode.disconnect(); captureNode = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  $("start").disabled = false;
  $("stop").disabled = true;
}

// A blocked resource or inline code would be a bug in this page: show it (tests fail on any error).
document.addEventListener("securitypolicyviolation", (e) => logError(`blocked by CSP: ${e.violatedDirective} ${e.blockedURI}`));
$("start").onclick = start;
$("stop").onclick = () => { stopCapture(); stopPlayback(); if (ws) ws.close(); };
$("apply").onclick = applySettings;
for (const id of ["td-type", "eagerness", "silence-cap", "prompt"]) {
  $(id).addEventListener("input", () => { formTouched = true; syncSettingsForm(); });
}
syncSettingsForm();
