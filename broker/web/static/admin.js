// The admin console's actions: a form with data-method and data-path calls the broker's REST API
// (api.js sends the XSRF header), then the page reloads to show the new state and announces what was
// done; a refusal shows the broker's message (already in the page's language) and keeps the focus.
import { apiRequest, errorText, pageStrings } from "./api.js";

const FLASH = "admin-flash";
const strings = pageStrings("page-strings");
const alertRegion = document.getElementById("admin-alert");
const statusRegion = document.getElementById("admin-status");

// "/api/v1/admin/users/{username}/…": a {field} in the path is taken from the form, not sent in the body.
function requestOf(form) {
  const body = {};
  let path = form.dataset.path;
  for (const element of form.elements) {
    if (!element.name || element.value === "") continue;
    const value = element.type === "number" ? Number(element.value) : element.value;
    const slot = `{${element.name}}`;
    if (path.includes(slot)) path = path.replace(slot, encodeURIComponent(value));
    else body[element.name] = value;
  }
  return { method: form.dataset.method, path, body };
}

async function submit(form, event) {
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  const { method, path, body } = requestOf(form);
  alertRegion.textContent = "";
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await apiRequest(method, path, body);
    sessionStorage.setItem(FLASH, form.dataset.done || "");
    window.location.reload();
  } catch (error) {
    alertRegion.textContent = errorText(error, strings.network);
    button.disabled = false;
    button.removeAttribute("aria-busy");
    const field = error.field && form.elements.namedItem(error.field);
    (field || button).focus();
  }
}

for (const form of document.querySelectorAll("form.api-form")) {
  form.addEventListener("submit", (event) => submit(form, event));
}

const flash = sessionStorage.getItem(FLASH);
if (flash) {
  sessionStorage.removeItem(FLASH);
  statusRegion.textContent = flash;
}

// The pools page follows each unfinished rollout in place: state, progress text and bar, until it is
// promoted or rolled back, which the status region announces. A reload would lose what is being typed.
const ROLLOUT_POLL_MS = 3000;
const rolloutStrings = pageStrings("rollout-strings");

function fill(template, values) {
  return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

function showRollout(status, rollout) {
  const state = rolloutStrings.labels[rollout.state] || rollout.state;
  const progress = rollout.progress;
  const line = status.querySelector(".rollout-state");
  line.dataset.state = rollout.state;
  line.textContent =
    fill(rolloutStrings.state, { id: rollout.id, version: rollout.version, state }) +
    (rollout.reason ? ` (${rollout.reason})` : "");
  status.querySelector(".rollout-progress").textContent = fill(rolloutStrings.progress, {
    done: progress.desktops_on_version,
    total: progress.desktops_total,
    started: progress.canaries_started,
    wanted: progress.canaries_wanted,
  });
  const bar = status.querySelector("progress");
  bar.max = Math.max(progress.desktops_total, 1);
  bar.value = progress.desktops_on_version;
  return state;
}

async function followRollout(status, pool) {
  try {
    const answer = await apiRequest("GET", `/api/v1/admin/pools/${encodeURIComponent(pool)}/rollout`);
    if (answer.rollout) {
      const state = showRollout(status, answer.rollout);
      if (answer.rollout.progress.finished) {
        delete status.dataset.follow;
        statusRegion.textContent = fill(rolloutStrings.finished, { pool, id: answer.rollout.id, state });
        return;
      }
    }
  } catch (error) {
    // A broker restarting or a network hiccup: the next poll tries again.
  }
  setTimeout(() => followRollout(status, pool), ROLLOUT_POLL_MS);
}

for (const status of document.querySelectorAll(".rollout-status[data-follow]")) {
  const pool = status.closest("article[data-pool]").dataset.pool;
  setTimeout(() => followRollout(status, pool), ROLLOUT_POLL_MS);
}
