// The recording player (administrators): noVNC's RFB fed by the broker's replay WebSocket.
//
// The broker sends the recorded RFB stream as binary frames and the play position as text frames
// ({"position_ms", "paused", "speed"}, then {"state": "ended"}); the page sends {"paused"} and {"speed"}
// as text frames. A seek opens a new stream from that point: noVNC has to decode from the start to
// rebuild the picture, which the broker sends without waiting up to the seek point (docs/recording.md).
// Tests and assistive technology follow the player through #player-status (text, data-state) and
// window.vdiPlayer.
import RFB from "/novnc/core/rfb.js";
import { pageStrings } from "./api.js";

const root = document.getElementById("player");
const recordingId = root.dataset.recording;
const durationMs = Number(root.dataset.durationMs);
const strings = pageStrings("player-strings");
const status = document.getElementById("player-status");
const alertRegion = document.getElementById("player-error");
const screen = document.getElementById("screen");
const playPause = document.getElementById("play-pause");
const speedSelect = document.getElementById("speed");
const seek = document.getElementById("seek");
const positionOutput = document.getElementById("position");

const player = { state: "connecting", positionMs: 0, speed: 1, paused: false, streams: 0 };
window.vdiPlayer = player;
let rfb = null;
let channel = null;
let dragging = false;

function clock(ms) {
  const seconds = Math.floor(ms / 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${Math.floor(seconds / 3600)}:${pad(Math.floor(seconds / 60) % 60)}:${pad(seconds % 60)}`;
}

function setState(state) {
  player.state = state;
  status.dataset.state = state;
  status.textContent = strings[state] || state;
  const showPlay = state === "paused" || state === "ended" || state === "failed";
  playPause.textContent = showPlay ? strings.play : strings.pause;
}

function showPosition(ms) {
  player.positionMs = ms;
  const text = `${clock(ms)} / ${clock(durationMs)}`;
  positionOutput.textContent = text;
  seek.setAttribute("aria-valuetext", text);
  if (!dragging) seek.value = String(ms);
}

function onText(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return;
  }
  if (message.state === "ended") {
    showPosition(message.position_ms);
    setState("ended");
    return;
  }
  if (typeof message.position_ms === "number") {
    showPosition(message.position_ms);
    setState(message.paused ? "paused" : "playing");
  }
}

function control(message) {
  if (channel && channel.readyState === WebSocket.OPEN) channel.send(JSON.stringify(message));
}

function replayUrl(startMs) {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const query = `start_ms=${Math.round(startMs)}&speed=${player.speed}`;
  return `${scheme}://${window.location.host}/admin/recordings/${recordingId}/replay?${query}`;
}

function stop() {
  if (rfb) {
    rfb.removeEventListener("disconnect", onDisconnect);
    rfb.disconnect();
  }
  rfb = null;
  channel = null;
}

function onDisconnect(event) {
  rfb = null;
  if (player.state !== "ended") {
    setState(event.detail.clean ? "ended" : "failed");
  }
}

function play(startMs) {
  stop();
  player.paused = false;
  alertRegion.textContent = "";
  setState(startMs > 0 ? "seeking" : "connecting");
  showPosition(startMs);
  channel = new WebSocket(replayUrl(startMs));
  channel.binaryType = "arraybuffer";
  const opened = channel;
  opened.addEventListener("open", () => {
    // A pause pressed while the stream was opening holds from the start.
    if (player.paused) opened.send(JSON.stringify({ paused: true }));
  });
  channel.addEventListener("message", (event) => {
    if (typeof event.data === "string") onText(event.data);
  });
  player.streams += 1;
  rfb = new RFB(screen, channel, { shared: true });
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  rfb.addEventListener("disconnect", onDisconnect);
}

playPause.addEventListener("click", () => {
  if (player.state === "ended" || player.state === "failed") {
    play(player.state === "ended" ? 0 : player.positionMs);
    return;
  }
  player.paused = !(player.state === "paused");
  setState(player.paused ? "paused" : "playing");
  control({ paused: player.paused });
});

speedSelect.addEventListener("change", () => {
  player.speed = Number(speedSelect.value);
  control({ speed: player.speed });
});

seek.addEventListener("pointerdown", () => {
  dragging = true;
});
seek.addEventListener("input", () => {
  const text = `${clock(Number(seek.value))} / ${clock(durationMs)}`;
  positionOutput.textContent = text;
  seek.setAttribute("aria-valuetext", text);
});
seek.addEventListener("change", () => {
  dragging = false;
  play(Number(seek.value));
});

window.addEventListener("pagehide", stop);
play(0);
