// specvoice browser page: a Realtime-protocol client (the same endpoint the openai SDK uses).
// Microphone -> AudioWorklet -> pcm16 24 kHz -> input_audio_buffer.append; reply audio deltas are scheduled
// back to back on the same AudioContext. `window.specvoice` exposes what happened (tests read it).
"use strict";

const RATE = 24000;
const state = (window.specvoice = {
  status: "idle", transcripts: [], replies: [], latenciesMs: [], errors: [],
  audioChunksReceived: 0, audioChunksPlayed: 0, audioMsPlayed: 0, truncations: 0,
});

let ws = null, ctx = null, micStream = null, captureNode = null;
let nextPlayTime = 0, playing = [], speechStoppedAt = null, currentReply = null;
const turns = new Map(); // item id -> {el, text}

function setStatus(s) { state.status = s; document.getElementById("status").textContent = s; }

function turnElement(id, cls) {
  if (!turns.has(id)) {
    const div = document.createElement("div");
    div.className = "turn";
    div.innerHTML = `<div class="${cls}"></div><div class="latency"></div>`;
    document.getElementById("log").appendChild(div);
    turns.set(id, { el: div, text: "" });
  }
  return turns.get(id);
}

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
  };
  playing.push(source);
  source.start(startAt);
}

function stopPlayback() {
  // Barge-in: silence what is queued and tell the server how much of the reply was actually heard.
  if (currentReply && currentReply.startedAt !== null && playing.length) {
    const heardMs = Math.max(0, Math.min((ctx.currentTime - currentReply.startedAt) * 1000, currentReply.sentMs));
    send({ type: "conversation.item.truncate", item_id: currentReply.itemId, content_index: 0,
      audio_end_ms: Math.floor(heardMs) });
    state.truncations += 1;
  }
  for (const source of playing) { source.stoppedEarly = true; try { source.stop(); } catch (e) { /* already ended */ } }
  playing = [];
  nextPlayTime = 0;
}

function onEvent(event) {
  switch (event.type) {
    case "input_audio_buffer.speech_started": stopPlayback(); setStatus("listening"); break;
    case "input_audio_buffer.speech_stopped": speechStoppedAt = performance.now(); setStatus("thinking"); break;
    case "conversation.item.input_audio_transcription.delta": {
      const t = turnElement(event.item_id, "user partial");
      t.text += event.delta;
      t.el.firstChild.textContent = "You: " + t.text;
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      const t = turnElement(event.item_id, "user");
      t.text = event.transcript;
      t.el.firstChild.className = "user";
      t.el.firstChild.textContent = "You: " + event.transcript;
      state.transcripts.push(event.transcript);
      break;
    }
    case "response.created":
      currentReply = { id: event.response.id, itemId: null, startedAt: null, sentMs: 0, firstAudio: false };
      break;
    case "response.output_audio_transcript.delta": {
      if (currentReply) currentReply.itemId = event.item_id;
      const t = turnElement(event.item_id, "assistant");
      t.text += event.delta;
      t.el.firstChild.textContent = "Assistant: " + t.text;
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
        if (speechStoppedAt !== null) {
          const ms = Math.round(performance.now() - speechStoppedAt);
          state.latenciesMs.push(ms);
          turnElement(event.item_id, "assistant").el.lastChild.textContent = `end of speech → first audio: ${ms} ms`;
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
      currentReply = null;
      setStatus("listening");
      break;
    }
    case "error":
      state.errors.push(event.error.message);
      console.warn("server error:", event.error.message);
      break;
  }
}

async function start() {
  document.getElementById("start").disabled = true;
  setStatus("starting");
  try {
    ctx = new AudioContext({ sampleRate: RATE });
    await ctx.resume(); // inside the click: allowed to make sound
    await ctx.audioWorklet.addModule("/worklet.js");
    const token = new URLSearchParams(location.search).get("token");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/realtime` + (token ? `?token=${encodeURIComponent(token)}` : "");
    ws = new WebSocket(url, ["realtime"]);
    ws.onmessage = (m) => onEvent(JSON.parse(m.data));
    ws.onclose = (e) => { setStatus(e.reason ? `closed: ${e.reason}` : "closed"); stopCapture(); };
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("cannot connect")); });
    send({ type: "session.update", session: { type: "realtime",
      audio: { input: { format: { type: "audio/pcm", rate: RATE }, turn_detection: { type: "server_vad" } },
        output: { format: { type: "audio/pcm", rate: RATE } } } } });
    // The microphone opens only once the server listens, so the first words are not lost.
    micStream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
    const source = ctx.createMediaStreamSource(micStream);
    captureNode = new AudioWorkletNode(ctx, "capture");
    captureNode.port.onmessage = (m) => send({ type: "input_audio_buffer.append", audio: floatToB64(m.data) });
    source.connect(captureNode);
    setStatus("listening");
    document.getElementById("stop").disabled = false;
  } catch (err) {
    state.errors.push(String(err));
    setStatus("error: " + err.message);
    document.getElementById("start").disabled = false;
  }
}

function stopCapture() {
  if (captureNode) { captureNode.disconnect(); captureNode = null; }
  if (micStream) { micStream.getTracks().forEach((t) => t.stop()); micStream = null; }
  document.getElementById("start").disabled = false;
  document.getElementById("stop").disabled = true;
}

document.getElementById("start").onclick = start;
document.getElementById("stop").onclick = () => { stopCapture(); stopPlayback(); if (ws) ws.close(); };
