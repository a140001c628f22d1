// The status page: cards, the backfill form, the calendar heat map and the batch list, kept current by the
// event stream (with a slow poll only while the stream is down). Talks to the same-origin API alone.

import { apply, lang, onLangChange, setLang, t, tn } from "./i18n.js";
import { ApiError, EVENTS_URL, allRecords, api, getToken, setToken } from "./api.js";
import { BatchList } from "./batches.js";
import { Heatmap } from "./heatmap.js";
import { Stream } from "./stream.js";
import { addDays, fmtDateTime, fmtDay, fmtNumber, isDay, spanDays, throttle, todayIso } from "./format.js";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
const FIELDS = ["start_date", "end_date", "source", "force"];
const DAY_STATUS = { running: "running", succeeded: "success", failed: "failed" };

const state = {
  cards: null,
  sources: [],
  batchTotal: 0,
  connection: "connecting",
  selection: null, // [start, end, stats] chosen on the heat map
  heatSeq: 0,
  started: null, // the answer to the last start, re-rendered in the current language until the form changes
};

// --- messages ------------------------------------------------------------------------------------------------

function say(node, text, kind = "info") {
  node.textContent = text || "";
  node.dataset.kind = kind;
}

function notice(text) {
  const node = $("notice");
  node.hidden = !text;
  node.textContent = text || "";
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401) {
    $("settings").open = true;
    return t("err.auth"); // the page's own sentence says what to do; the API's would say it again
  }
  return error instanceof Error ? error.message : String(error);
}

// The API names its fields as the JSON does (start_date); next to the form, the form's own labels read better.
const LABELS = { start_date: "form.start", end_date: "form.end", source: "form.source", force: "form.force" };

function inFormWords(message) {
  return FIELDS.reduce((text, f) => text.replaceAll(f, t(LABELS[f])), message);
}

// --- cards -----------------------------------------------------------------------------------------------------

function renderCards() {
  const c = state.cards;
  for (const k of ["synced", "failed", "running", "queued"]) $(`card-${k}`).textContent = c ? fmtNumber(c[k]) : "–";
  const last = $("card-last");
  last.textContent = !c ? "–" : c.last_success_at ? fmtDateTime(c.last_success_at) : t("cards.never");
  for (const card of document.querySelectorAll(".card")) {
    const k = card.dataset.kind;
    card.classList.toggle("hot", !!c && k !== "last" && k !== "synced" && Number(c[k]) > 0);
  }
}

async function loadCards() {
  try {
    const { data } = await api.summary({ limit: 1 });
    state.cards = data.cards;
    renderCards();
    notice("");
  } catch (error) {
    notice(failure(error));
  }
}

// --- the form --------------------------------------------------------------------------------------------------

const form = $("batch-form");

function formRange() {
  const start = $("start_date").value;
  const end = $("end_date").value;
  return isDay(start) && isDay(end) && start <= end ? [start, end] : null;
}

function updateDays() {
  const r = formRange();
  $("form-days").textContent = r ? tn("form.days", spanDays(r[0], r[1])) : "";
}

function clearErrors() {
  for (const f of FIELDS) {
    $(`${f}-error`).textContent = "";
    $(f).removeAttribute("aria-invalid");
  }
}

function showErrors(error) {
  let first = null;
  for (const item of error.errors) {
    const field = item && FIELDS.includes(item.field) ? item.field : null;
    if (!field) continue;
    const node = $(`${field}-error`);
    const message = inFormWords(item.message);
    node.textContent = node.textContent ? `${node.textContent} ${message}` : message;
    $(field).setAttribute("aria-invalid", "true");
    first = first || field;
  }
  if (first) $(first).focus();
  return first !== null;
}

function renderStarted() {
  const started = state.started;
  if (!started) return;
  const text = started.deduplicated ? t("form.deduplicated", { id: started.id }) : tn("form.started", started.days);
  say($("form-message"), text, "ok");
}

function forgetStarted() {
  if (!state.started) return;
  state.started = null;
  say($("form-message"), "");
}

/** Bring a batch into view (on a phone the list is screens below the form). */
function reveal(id) {
  const item = document.querySelector(`li.batch[data-id="${id}"]`);
  if (!item) return;
  const box = item.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) item.scrollIntoView({ block: "center" });
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("start");
  const message = $("form-message");
  const body = {
    start_date: $("start_date").value,
    end_date: $("end_date").value,
    force: $("force").checked,
  };
  if (state.sources.length > 1) body.source = $("source").value;
  button.disabled = true;
  button.textContent = t("form.sending");
  state.started = null;
  say(message, "");
  try {
    const { data } = await api.startBatch(body);
    state.started = { id: data.batch_id, days: data.days, deduplicated: !!data.deduplicated };
    renderStarted();
    await loadBatch(data.batch_id);
    reveal(data.batch_id);
    refreshCards();
  } catch (error) {
    // Field errors stand next to their fields; the line under the button then only points at them.
    const marked = error instanceof ApiError && showErrors(error);
    say(message, marked ? t("form.invalid") : failure(error), "error");
  } finally {
    button.disabled = false;
    button.textContent = t("form.submit");
  }
}

function onFormChange(event) {
  const field = event.target.id;
  forgetStarted();
  if (FIELDS.includes(field)) {
    $(`${field}-error`).textContent = "";
    $(field).removeAttribute("aria-invalid");
  }
  updateDays();
  if (field === "source") loadHeat();
  else if ((field === "start_date" || field === "end_date") && $("hm-period").value === "range") refreshHeat();
}

function fillDefaults() {
  const today = todayIso();
  const end = addDays(today, -1);
  $("end_date").value = end;
  $("start_date").value = addDays(end, -6);
  $("start_date").max = today;
  $("end_date").max = today;
  updateDays();
}

async function loadSources() {
  try {
    const { data } = await api.sources();
    state.sources = data.sources || [];
  } catch {
    state.sources = [];
  }
  const select = $("source");
  select.replaceChildren(...state.sources.map((s) => {
    const option = document.createElement("option");
    option.value = s.name;
    option.textContent = s.handler && s.handler !== s.name ? `${s.name} (${s.handler})` : s.name;
    return option;
  }));
  if (state.sources.some((s) => s.name === "default")) select.value = "default";
  $("source-field").hidden = state.sources.length <= 1;
}

function currentSource() {
  return state.sources.length > 1 ? $("source").value : undefined;
}

// --- the heat map ---------------------------------------------------------------------------------------------

const heat = new Heatmap($("heatmap"), $("hm-tip"), (start, end, stats) => {
  $("start_date").value = start;
  $("end_date").value = end;
  clearErrors();
  forgetStarted();
  updateDays();
  state.selection = [start, end, stats];
  renderSelection();
});

function renderSelection() {
  if (!state.selection) {
    $("hm-selection").textContent = "";
    return;
  }
  const [start, end, stats] = state.selection;
  $("hm-selection").textContent = t("heat.selected", {
    from: fmtDay(start), to: fmtDay(end), n: tn("form.days", stats.days),
    missing: fmtNumber(stats.missing), failed: fmtNumber(stats.failed),
  });
}

function heatRange() {
  const r = $("hm-period").value === "range" ? formRange() : null;
  if (r) return r;
  const today = todayIso();
  return [addDays(today, -364), today];
}

async function loadHeat() {
  const seq = ++state.heatSeq;
  const [from, to] = heatRange();
  try {
    const { records } = await allRecords(from, to, currentSource());
    if (seq !== state.heatSeq) return; // a newer request superseded this one
    heat.show(from, to, new Map(records.map((r) => [r.day, r])));
  } catch (error) {
    if (seq !== state.heatSeq) return;
    if (!heat.table) heat.show(from, to, new Map());
    notice(failure(error));
  }
}

// --- batches ---------------------------------------------------------------------------------------------------

const list = new BatchList($("batches"), {
  cancel: (id, button) => act(api.cancel, id, button),
  retry: (id, button) => act(api.retry, id, button),
  open: (id) => loadBatch(id),
});

function renderListChrome() {
  $("batches-empty").hidden = list.size > 0;
  $("more").hidden = list.size >= state.batchTotal;
}

async function loadBatches() {
  try {
    const { data } = await api.batches(PAGE, 0);
    state.batchTotal = Math.max(data.total ?? 0, data.batches?.length ?? 0);
    list.upsert(...(data.batches || []));
    for (const id of list.expanded) refreshDetail(id);
  } catch (error) {
    notice(failure(error));
  }
  renderListChrome();
}

async function loadMore() {
  try {
    const { data } = await api.batches(PAGE, list.size);
    state.batchTotal = data.total ?? state.batchTotal;
    list.upsert(...(data.batches || []));
  } catch (error) {
    say($("batch-message"), failure(error), "error");
  }
  renderListChrome();
}

async function loadBatch(id) {
  try {
    const { data } = await api.batch(id);
    if (!list.has(id)) state.batchTotal += 1;
    list.upsert(data.batch);
    if (list.expanded.has(Number(id))) list.setTasks(id, data.tasks || []);
    renderListChrome();
  } catch (error) {
    say($("batch-message"), failure(error), "error");
  }
}

async function act(call, id, button) {
  button.disabled = true;
  try {
    const { data } = await call(id);
    if (data.batch) list.upsert(data.batch);
    say($("batch-message"), data.message || "", "ok");
    refreshCards();
  } catch (error) {
    say($("batch-message"), failure(error), "error");
  } finally {
    button.disabled = false;
  }
}

const detailRefreshers = new Map();

function refreshDetail(id) {
  if (!detailRefreshers.has(id)) detailRefreshers.set(id, throttle(() => loadBatch(id), 1000));
  detailRefreshers.get(id)();
}

// --- live updates ----------------------------------------------------------------------------------------------

const refreshCards = throttle(loadCards, 1000);
const refreshHeat = throttle(loadHeat, 3000);
const refreshBatches = throttle(loadBatches, 500);

function onEvent(name, ev) {
  const known = list.applyEvent(name, ev);
  if (!known) refreshBatches();
  if (name === "task" && ev.day) {
    const batch = list.get(ev.batch_id);
    const status = DAY_STATUS[ev.state];
    const source = currentSource() ?? "default";
    if (batch && status && (batch.source ?? "default") === source) {
      const patch = { status };
      if (ev.attempt !== null && ev.attempt !== undefined) patch.attempts = ev.attempt;
      if (status === "failed") patch.error = ev.error;
      if (status === "success") patch.error = null;
      heat.update(ev.day, patch);
    }
    if (list.expanded.has(Number(ev.batch_id))) refreshDetail(Number(ev.batch_id));
  }
  // A batch transition may carry no counts (a cancel): read the batch itself, once the burst has passed.
  if (name === "batch" && known) refreshDetail(Number(ev.batch_id));
  refreshCards();
  refreshHeat();
  renderListChrome();
}

function onConnection(next) {
  // Back in touch: a "cannot reach the server" notice from the outage is stale now.
  if (next === "open" && state.connection !== "open") notice("");
  state.connection = next;
  $("conn").dataset.state = next;
  $("conn-text").textContent = t(`conn.${next}`);
}

const stream = new Stream(EVENTS_URL, {
  snapshot: (data) => {
    if (data.cards) {
      state.cards = data.cards;
      renderCards();
    }
    // The first lists may have been read before this snapshot: a batch that ended in between has its final event
    // at or below the snapshot's id, which the stream does not replay. Read them again, after it.
    refreshBatches();
    refreshHeat();
  },
  event: onEvent,
  state: onConnection,
  // Events may have been missed before the first id was known: re-read the lists once.
  resumed: () => {
    refreshBatches();
    refreshHeat();
  },
});

// While the stream is down, a slow poll keeps the page roughly current; it stops as soon as the stream is back.
let pollCount = 0;
function poll() {
  if (state.connection === "open") return;
  pollCount += 1;
  loadCards();
  loadBatches();
  if (pollCount % 3 === 0) loadHeat();
}

// --- language and token ---------------------------------------------------------------------------------------

function relabel() {
  $("lang").value = lang();
  $("start").textContent = t("form.submit");
  onConnection(state.connection);
  renderCards();
  updateDays();
  renderSelection();
  renderStarted();
  list.redraw();
  if (heat.table) heat.render();
}

function initToken() {
  const input = $("token");
  const panel = $("settings");
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    input.dispatchEvent(new Event("change"));
    panel.open = false;
  });
  // A popover closes like one: on a click elsewhere and on Escape, so it never stays over the cards or calendar.
  document.addEventListener("click", (e) => {
    if (panel.open && !panel.contains(e.target)) panel.open = false;
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && panel.open) {
      panel.open = false;
      panel.querySelector("summary").focus();
    }
  });
  input.value = getToken();
  input.addEventListener("change", () => {
    const value = input.value.trim();
    setToken(value);
    $("token-status").textContent = value ? t("token.saved") : t("token.cleared");
  });
}

// --- start -----------------------------------------------------------------------------------------------------

function init() {
  apply();
  $("lang").value = lang();
  $("lang").addEventListener("change", (e) => setLang(e.target.value));
  onLangChange(relabel);
  initToken();
  fillDefaults();
  form.addEventListener("submit", submit);
  form.addEventListener("change", onFormChange);
  form.addEventListener("input", updateDays);
  $("hm-period").addEventListener("change", loadHeat);
  $("refresh").addEventListener("click", () => {
    loadCards();
    loadBatches();
    loadHeat();
  });
  $("more").addEventListener("click", loadMore);
  onConnection("connecting");
  renderCards();

  loadSources().then(loadHeat);
  loadCards();
  loadBatches();
  stream.start();
  window.addEventListener("offline", () => stream.lost());
  window.addEventListener("online", () => stream.reconnect());
  setInterval(() => list.tick(), 1000);
  setInterval(poll, 5000);
  window.datesync = { stream, list, heat };
}

init();
