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
