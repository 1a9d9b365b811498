// The console page: a fresh single-use console token, then noVNC's RFB over the gateway.
//
// Tests and assistive technology follow the connection through #console-status: its text,
// its data-state attribute and window.vdiConsoleState all change together.
import RFB from "/novnc/core/rfb.js";
import { apiPost, errorText, pageStrings } from "./api.js";

const root = document.getElementById("console");
const sessionId = root.dataset.sessionId;
const strings = pageStrings("console-strings");
const status = document.getElementById("console-status");
const alertRegion = document.getElementById("console-error");
const noticeRegion = document.getElementById("console-notice");
const screen = document.getElementById("screen");
const buttons = {
  reconnect: document.getElementById("reconnect"),
  disconnect: document.getElementById("disconnect"),
  logoff: document.getElementById("logoff"),
};
const sessionUrl = `/api/v1/sessions/${encodeURIComponent(sessionId)}`;
const clipboardText = document.getElementById("clipboard-text");

let rfb = null;
let leaving = false;
// A tunnel that breaks (its gateway died, the network blinked) is opened again with a fresh token, through
// whichever gateway the load balancer picks; a few tries, then the Reconnect button is the user's.
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000];
let reconnectTries = 0;
let reconnectTimer = null;
let channelBroke = false;

function setState(state, text) {
  status.dataset.state = state;
  status.textContent = text;
  window.vdiConsoleState = state;
}

function showError(text) {
  alertRegion.textContent = text;
}

const NOTICE_SHOWN_MS = 8000;
let noticeTimer = null;

// The gateway announces clipboard transfers its policy stopped as WebSocket text frames; noVNC
// reads binary frames only, so they reach the page and never the RFB stream.
function showNotice(text) {
  let notice;
  try {
    notice = JSON.parse(text);
  } catch {
    return;
  }
  if (notice.notice !== "clipboard") return;
  const key = notice.result === "truncated" ? "clipboard_truncated" : `clipboard_blocked_${notice.direction}`;
  if (!strings[key]) return;
  noticeRegion.textContent = strings[key];
  noticeRegion.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    noticeRegion.hidden = true;
  }, NOTICE_SHOWN_MS);
}

function openChannel(url) {
  // Our own WebSocket handed to noVNC (it accepts a channel), so the page can hear the notices too.
  const channel = new WebSocket(url);
  channel.binaryType = "arraybuffer";
  channel.addEventListener("close", (event) => {
    // 1006: the connection ended without a close frame (RFC 6455 section 7.1.5): the gateway or the path
    // to it died. A gateway that ends a console on purpose (logoff, revoke) sends a close frame.
    channelBroke = event.code === 1006;
  });
  channel.addEventListener("message", (event) => {
    if (typeof event.data === "string") showNotice(event.data);
  });
  return channel;
}

function consoleUrl(grant) {
  // The token rides in the query string to the gateway only; the gateway masks it in its logs.
  const separator = grant.gateway_url.includes("?") ? "&" : "?";
  return `${grant.gateway_url}${separator}token=${encodeURIComponent(grant.token)}`;
}

function onConnect() {
  reconnectTries = 0;
  setState("connected", strings.connected);
  buttons.reconnect.hidden = true;
  rfb.focus();
}

function onDisconnect(event) {
  rfb = null;
  if (leaving) return;
  const text = event.detail.clean ? strings.disconnected : strings.connection_lost;
  setState("disconnected", text);
  buttons.reconnect.hidden = false;
  // noVNC calls a server's close "clean" either way; the WebSocket's close code tells a broken tunnel
  // from the gateway's word (logged off, revoked, replaced), and only a broken one is opened again.
  if (channelBroke && reconnectTries < RECONNECT_DELAYS_MS.length) {
    reconnectTimer = setTimeout(connect, RECONNECT_DELAYS_MS[reconnectTries]);
    reconnectTries += 1;
  }
}

function onSecurityFailure(event) {
  const reason = event.detail.reason ? `: ${event.detail.reason}` : "";
  showError(`${strings.security_failure}${reason}`);
}

async function connect() {
  clearTimeout(reconnectTimer);
  channelBroke = false;
  showError("");
  buttons.reconnect.hidden = true;
  setState("connecting", strings.connecting);
  try {
    // A token lives seconds and opens one tunnel, so fetch it right before connecting.
    const grant = await apiPost(`${sessionUrl}/console-token`);
    rfb = new RFB(screen, openChannel(consoleUrl(grant)));
  } catch (error) {
    setState("error", strings.disconnected);
    showError(errorText(error, strings.network));
    buttons.reconnect.hidden = false;
    if (reconnectTries > 0 && reconnectTries < RECONNECT_DELAYS_MS.length) {
      reconnectTimer = setTimeout(connect, RECONNECT_DELAYS_MS[reconnectTries]);
      reconnectTries += 1;
    }
    return;
  }
  // A session host's Xvnc follows the browser: noVNC asks it for the screen's size (ExtendedDesktopSize) at
  // connect and whenever the window changes. A VM's display keeps its own size and is scaled to fit.
  rfb.resizeSession = root.dataset.resize === "remote";
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", onConnect);
  rfb.addEventListener("disconnect", onDisconnect);
  rfb.addEventListener("securityfailure", onSecurityFailure);
  // What the desktop copied (as far as the pool's clipboard policy lets it through the gateway).
  rfb.addEventListener("clipboard", (event) => {
    clipboardText.value = event.detail.text;
  });
}

function closeConsole() {
  leaving = true;
  clearTimeout(reconnectTimer);
  if (rfb) rfb.disconnect();
}

async function logoff() {
  buttons.logoff.disabled = true;
  setState("logging_off", strings.logging_off);
  closeConsole();
  try {
    await apiPost(`${sessionUrl}/logoff`);
    window.location.assign("/desktops");
  } catch (error) {
    leaving = false;
    buttons.logoff.disabled = false;
    setState("error", strings.disconnected);
    showError(errorText(error, strings.network));
    buttons.reconnect.hidden = false;
  }
}

buttons.disconnect.addEventListener("click", () => {
  closeConsole();
  window.location.assign("/desktops");
});
buttons.logoff.addEventListener("click", logoff);
buttons.reconnect.addEventListener("click", connect);
// The clipboard field's text goes to the desktop's clipboard; the gateway applies the pool's policy and
// tells the page (showNotice) when it blocked or cut the text.
document.getElementById("clipboard-send").addEventListener("click", () => {
  if (rfb) rfb.clipboardPasteFrom(clipboardText.value);
});

// At a center terminal the seat's end ends the visit: the broker signs the user out and cuts the console
// (broker/seat_ends.py); the page goes back to the kiosk, which leads to the sign-in page for the next user.
if (root.dataset.seatEndsInMs) {
  window.setTimeout(() => {
    closeConsole();
    window.location.assign("/kiosk");
  }, Math.min(Number(root.dataset.seatEndsInMs), 2 ** 31 - 1)); // longer delays fire at once
}

if (root.dataset.sessionState === "active") {
  connect();
} else {
  buttons.reconnect.disabled = true;
  buttons.logoff.disabled = true;
  window.vdiConsoleState = "ended";
}

// The watermark: the server's "user · address" with the time, repeated over the screen, renewed each minute.
const watermark = document.getElementById("watermark");
function paintWatermark() {
  const stamp = `${watermark.dataset.text} · ${new Date().toLocaleString()}`;
  const spans = Array.from({ length: 24 }, () => {
    const span = document.createElement("span");
    span.textContent = stamp;
    return span;
  });
  watermark.replaceChildren(...spans);
}
if (watermark) {
  paintWatermark();
  setInterval(paintWatermark, 60_000);
}
