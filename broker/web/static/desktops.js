// "My desktops": a Connect button asks the broker for a session, then opens its console page.
import { apiPost, errorText, pageStrings } from "./api.js";

const strings = pageStrings("page-strings");
const alertRegion = document.getElementById("desktops-error");
const statusRegion = document.getElementById("desktops-status");

function setBusy(busy) {
  for (const button of document.querySelectorAll("button.connect")) button.disabled = busy;
}

async function connect(button) {
  const pool = button.dataset.pool;
  setBusy(true);
  button.setAttribute("aria-busy", "true");
  alertRegion.textContent = "";
  statusRegion.textContent = button.dataset.connecting;
  try {
    const result = await apiPost(`/api/v1/pools/${encodeURIComponent(pool)}/connect`);
    window.location.assign(result.console_url);
  } catch (error) {
    statusRegion.textContent = "";
    alertRegion.textContent = errorText(error, strings.network);
    setBusy(false);
    button.removeAttribute("aria-busy");
    button.focus();
  }
}

for (const button of document.querySelectorAll("button.connect")) {
  button.addEventListener("click", () => connect(button));
}

// Coming back with the browser's Back button restores this page from the cache as it was left:
// buttons disabled and "connecting…" showing. Start over instead.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  setBusy(false);
  statusRegion.textContent = "";
});
