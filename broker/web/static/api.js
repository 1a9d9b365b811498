// Calls to the broker's REST API from portal pages.
//
// Every POST carries the X-XSRFToken header: the broker runs Tornado with xsrf_cookies, and the
// header (copied from the readable _xsrf cookie) is what a cross-site page cannot produce.

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.reason = error.reason || "";
    this.field = error.field;
  }
}

function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-XSRFToken"] = xsrfToken();
    init.body = JSON.stringify(body ?? {});
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, data.error || {});
  }
  return data;
}

export const apiGet = (path) => request("GET", path);
export const apiRequest = (method, path, body) => request(method, path, body);
export const apiPost = (path, body) => request("POST", path, body);

// The message to show for a failed call: the broker's own (already in the page's language),
// or the page's "cannot reach the broker" text when the request never got an answer.
export function errorText(error, networkText) {
  return error instanceof ApiError ? error.message : networkText;
}

export function pageStrings(id) {
  const element = document.getElementById(id);
  return element ? JSON.parse(element.textContent) : {};
}
