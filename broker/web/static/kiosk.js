// Kiosk page of a center terminal: sign the user out after the center's idle time without input, or when
// the seat's booking ends; the logout form returns the browser to the sign-in page, which leads the next
// user back here. The broker ends the portal session at the seat's end by itself as well (and cuts the
// consoles, broker/seat_ends.py); the page also checks every few seconds that its session is still alive,
// so a session ended elsewhere (signed out on another device, revoked by an administrator) leaves too.
import { pageStrings } from "./api.js";

const main = document.getElementById("main");
const form = document.getElementById("kiosk-logout");
const statusRegion = document.getElementById("kiosk-status");
const strings = pageStrings("page-strings");
const idleMs = Number(main.dataset.idleS) * 1000;
// Time left as the broker counted it: the terminal's own clock may be wrong, its elapsed time is not.
const endsInMs = main.dataset.endsInMs === "" ? null : Number(main.dataset.endsInMs);
const loadedAt = performance.now();
const ALIVE_CHECK_MS = 10000;
let lastInput = performance.now();
let lastAliveCheck = performance.now();
let leaving = false;

function signOut() {
  if (leaving) return;
  leaving = true;
  statusRegion.textContent = strings.signing_out;
  form.submit();
}

for (const type of ["keydown", "pointerdown", "pointermove", "wheel", "touchstart"]) {
  window.addEventListener(type, () => { lastInput = performance.now(); }, { passive: true });
}

async function stillSignedIn() {
  try {
    const response = await fetch("/api/v1/me", { credentials: "same-origin", cache: "no-store" });
    return response.status !== 401;
  } catch {
    return true; // the broker out of reach is no sign-out; the timers still run
  }
}

async function check() {
  const now = performance.now();
  if (now - lastInput >= idleMs || (endsInMs !== null && now - loadedAt >= endsInMs)) {
    signOut();
    return;
  }
  if (now - lastAliveCheck >= ALIVE_CHECK_MS) {
    lastAliveCheck = now;
    if (!(await stillSignedIn())) signOut();
  }
}
window.setInterval(check, 1000);

document.getElementById("kiosk-fullscreen").addEventListener("click", () => {
  // Browsers allow full screen only from a user's gesture; a managed terminal starts the browser in kiosk mode.
  document.documentElement.requestFullscreen?.().catch(() => {});
});
main.focus();
