// Kiosk page of a center terminal: sign the user out after the center's idle time without input, or when
// the seat's booking ends; the logout form returns the browser to the sign-in page for the next user.
import { pageStrings } from "./api.js";

const main = document.getElementById("main");
const form = document.getElementById("kiosk-logout");
const statusRegion = document.getElementById("kiosk-status");
const strings = pageStrings("page-strings");
const idleMs = Number(main.dataset.idleS) * 1000;
const endsAt = main.dataset.endsAt ? Number(main.dataset.endsAt) : null;
let lastInput = Date.now();
let leaving = false;

function signOut() {
  if (leaving) return;
  leaving = true;
  statusRegion.textContent = strings.signing_out;
  form.submit();
}

for (const type of ["keydown", "pointerdown", "pointermove", "wheel", "touchstart"]) {
  window.addEventListener(type, () => { lastInput = Date.now(); }, { passive: true });
}

function check() {
  const now = Date.now();
  if (now - lastInput >= idleMs || (endsAt !== null && now >= endsAt)) signOut();
}
window.setInterval(check, 1000);

document.getElementById("kiosk-fullscreen").addEventListener("click", () => {
  // Browsers allow full screen only from a user's gesture; a managed terminal starts the browser in kiosk mode.
  document.documentElement.requestFullscreen?.().catch(() => {});
});
main.focus();
