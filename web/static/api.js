// The JSON API (docs/api.md): every answer is {"status": "success", "data": …} or
// {"status": "error", "message": …, "errors": [{field, message}]}. POSTs carry the bearer token when one is set.

import { acceptLanguage, t } from "./i18n.js";

export const PREFIX = "/api/v1/sync-status";
export const EVENTS_URL = `${PREFIX}/events`;
const TOKEN_KEY = "datesync.token";

export class ApiError extends Error {
  constructor(status, message, errors = []) {
    super(message);
    this.status = status;
    this.errors = Array.isArray(errors) ? errors : [];
  }
}

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage blocked: nothing to keep it in
  }
}

async function request(method, path, body) {
  const headers = { Accept: "application/json", "Accept-Language": acceptLanguage() };
  const token = getToken();
  if (method !== "GET" && token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(PREFIX + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
  } catch {
    throw new ApiError(0, t("err.network"));
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // not JSON (a proxy's error page): reported below with the HTTP status
  }
  if (!response.ok || !payload || payload.status !== "success") {
    const message = payload?.message || (response.status === 401 ? t("err.auth") : `HTTP ${response.status}`);
    throw new ApiError(response.status, message, payload?.errors);
  }
  return { status: response.status, data: payload.data ?? {} };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

export const api = {
  summary: (params = {}) => request("GET", `/${query(params)}`),
  sources: () => request("GET", "/sources"),
  batches: (limit, offset = 0) => request("GET", `/batches${query({ limit, offset })}`),
  batch: (id) => request("GET", `/batches/${encodeURIComponent(id)}`),
  startBatch: (body) => request("POST", "/sync/batch", body),
  cancel: (id) => request("POST", `/batches/${encodeURIComponent(id)}/cancel`),
  retry: (id) => request("POST", `/batches/${encodeURIComponent(id)}/retry`),
};

/** Every day record of [from, to] for a source, through as many pages as it takes. */
export async function allRecords(from, to, source) {
  const records = [];
  for (;;) {
    const { data } = await api.summary({ from, to, source, limit: 500, offset: records.length });
    const page = data.records || [];
    records.push(...page);
    if (page.length === 0 || records.length >= (data.total ?? 0)) return { records, cards: data.cards };
  }
}
