// The status page: cards, the backfill form, the calendar heat map and the batch list, kept current by the
// event stream (with a slow poll only while the stream is down). Talks to the same-origin API alone.

import { apply, lang, onLangChange, setLang, t, tn } from "./i18n.js";
import { ApiError, EVENTS_URL, allRecords, api, getToken, setToken } from "./api.js";
import { BatchList } from "./batches.js";
import { Heatmap, renderLegend } from "./heatmap.js";
import { Stream } from "./stream.js";
import { addDays, fmtDateTime, fmtDay, fmtDayRange, fmtNumber, isDay, spanDays, throttle, todayIso }
  from "./format.js";

const $ = (id) => document.getElementById(id);
const PAGE = 20;
const FIELDS = ["start_date", "end_date", "source", "force", "with_upstream", "cascade"];
const DAY_STATUS = { running: "running", succeeded: "success", failed: "failed" };
const HEAT_SOURCE_KEY = "datesync.heatSource";

const state = {
  cards: null,
  sources: [],
  batchTotal: 0,
  connection: "connecting",
  selection: null, // [start, end, stats] chosen on the heat map
  heatSeq: 0,
  started: null, // the answer to the last start, re-rendered in the current language until the form changes
  // "source|day" -> {upstream, upstream_day, batch_id, at}: which re-sync made a date stale, from the stream's
  // "day" events (a day record only says since when); lasts as long as the page.
  staleCauses: new Map(),
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
const LABELS = { start_date: "form.start", end_date: "form.end", source: "form.source", force: "form.force",
  with_upstream: "form.with_upstream", cascade: "form.cascade" };

function inFormWords(message) {
  return FIELDS.reduce((text, f) => text.replaceAll(f, t(LABELS[f])), message);
}

// --- cards -----------------------------------------------------------------------------------------------------

function renderCards() {
  const c = state.cards;
  for (const k of ["synced", "failed", "running", "queued"]) $(`card-${k}`).textContent = c ? fmtNumber(c[k]) : "–";
  // Dates waiting for upstream dates are not queued (they hold no slot), and stale ones are still synced: each is
  // a note under the count it belongs with, shown only when there are any.
  const sub = (id, key, n) => {
    $(id).hidden = !(Number(n) > 0);
    $(id).textContent = Number(n) > 0 ? tn(key, Number(n)) : "";
  };
  sub("card-waiting", "cards.waiting", c?.waiting);
  sub("card-stale", "cards.stale", c?.stale);
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
  const parts = [started.deduplicated ? t("form.deduplicated", { id: started.id }) : tn("form.started", started.days)];
  // The API's message says the same; composed here so that it follows a language switch like the rest.
  if (started.waiting > 0) parts.push(tn("form.waiting", started.waiting));
  for (const b of started.linked) {
    parts.push(t(`form.linked.${b.role === "downstream" ? "downstream" : "upstream"}`, {
      id: b.batch_id, source: b.source, range: fmtDayRange(b.start_date, b.end_date) }));
  }
  const [first, ...rest] = parts;
  say($("form-message"), rest.length ? t("form.more", { first, rest: rest.join(" ") }) : first, "ok");
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
  if (state.sources.length > 1) {
    body.source = $("source").value;
    body.with_upstream = $("with_upstream").checked;
    body.cascade = $("cascade").checked;
  }
  button.disabled = true;
  button.textContent = t("form.sending");
  state.started = null;
  say(message, "");
  try {
    const { data } = await api.startBatch(body);
    const linked = Array.isArray(data.linked) ? data.linked : [];
    state.started = { id: data.batch_id, days: data.days, deduplicated: !!data.deduplicated,
      waiting: Number(data.waiting ?? 0), linked };
    renderStarted();
    await Promise.all(linked.map((b) => loadBatch(b.batch_id)));
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
  // The calendar has its own source selector: the form's source no longer moves it.
  if ((field === "start_date" || field === "end_date") && $("hm-period").value === "range") refreshHeat();
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
  const options = () => state.sources.map((s) => {
    const option = document.createElement("option");
    option.value = s.name;
    option.textContent = s.handler && s.handler !== s.name ? `${s.name} (${s.handler})` : s.name;
    return option;
  });
  const names = state.sources.map((s) => s.name);
  const select = $("source");
  select.replaceChildren(...options());
  if (names.includes("default")) select.value = "default";
  // The calendar shows one source's dates: the one last chosen here, else the form's.
  const heatSelect = $("hm-source");
  heatSelect.replaceChildren(...options());
  const kept = stored(HEAT_SOURCE_KEY);
  heatSelect.value = names.includes(kept) ? kept : select.value;
  const several = state.sources.length > 1;
  for (const id of ["source-field", "hm-source-field", "with_upstream-field", "cascade-field"]) $(id).hidden = !several;
}

function stored(key) {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function heatSource() {
  return state.sources.length > 1 ? $("hm-source").value : undefined;
}

function onHeatSource() {
  try {
    localStorage.setItem(HEAT_SOURCE_KEY, $("hm-source").value);
  } catch {
    // not kept; the choice still holds for this visit
  }
  // A selection's counts were the other source's.
  heat.clearSelection();
  state.selection = null;
  renderSelection();
  loadHeat();
}

// --- the heat map ---------------------------------------------------------------------------------------------

const heat = new Heatmap($("heatmap"), $("hm-tip"), (start, end, stats) => {
  $("start_date").value = start;
  $("end_date").value = end;
  // The counts said under the calendar are its source's: the form takes that source with the dates.
  if (heatSource() !== undefined) $("source").value = heatSource();
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
  const text = t("heat.selected", {
    from: fmtDay(start), to: fmtDay(end), n: tn("form.days", stats.days),
    missing: fmtNumber(stats.missing), failed: fmtNumber(stats.failed),
  });
  $("hm-selection").textContent = stats.stale
    ? `${text} ${t("heat.selected.stale", { stale: fmtNumber(stats.stale) })}` : text;
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
    const source = heatSource();
    const { records } = await allRecords(from, to, source);
    if (seq !== state.heatSeq) return; // a newer request superseded this one
    heat.show(from, to, new Map(records.map((r) => [r.day, withCause(r, source)])));
  } catch (error) {
    if (seq !== state.heatSeq) return;
    if (!heat.table) heat.show(from, to, new Map());
    notice(failure(error));
  }
}

/** A day record with what made it stale, when this page saw it happen. */
function withCause(record, source = "default") {
  const cause = record.stale_since ? state.staleCauses.get(`${source}|${record.day}`) : null;
  // The event is written after the mark, in its transaction: an older event was about an earlier staleness.
  return cause && Date.parse(cause.at) >= Date.parse(record.stale_since) ? { ...record, stale_by: cause } : record;
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
  const shown = heatSource() ?? "default";
  if (name === "task" && ev.day) {
    const batch = list.get(ev.batch_id);
    const status = DAY_STATUS[ev.state]; // waiting and queued leave a date's record as it was
    if (batch && status && (batch.source ?? "default") === shown) {
      const patch = { status };
      if (ev.attempt !== null && ev.attempt !== undefined) patch.attempts = ev.attempt;
      if (status === "failed") patch.error = ev.error;
      if (status === "success") Object.assign(patch, { error: null, stale_since: null, stale_by: null });
      heat.update(ev.day, patch);
    }
    if (list.expanded.has(Number(ev.batch_id))) refreshDetail(Number(ev.batch_id));
  }
  if (name === "day" && ev.state === "stale" && ev.day && ev.data?.source) {
    // A forced re-sync of an upstream date outdated this (synced) date; the event is in the re-sync's batch.
    const cause = { upstream: ev.data.upstream, upstream_day: ev.data.upstream_day, batch_id: ev.batch_id, at: ev.at };
    state.staleCauses.set(`${ev.data.source}|${ev.day}`, cause);
    if (ev.data.source === shown) heat.update(ev.day, { status: "success", stale_since: ev.at, stale_by: cause });
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
  $("hm-source").addEventListener("change", onHeatSource);
  renderLegend($("hm-legend"));
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
