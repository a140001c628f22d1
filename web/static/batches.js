// The batch list: newest first, each with a live progress bar (done / total, failed, skipped, rate, ETA),
// Cancel and Retry-failed buttons, and a table of its dates on demand. Items are updated in place so that
// focus and open tables survive the stream of events.

import { t } from "./i18n.js";
import { fmtDateTime, fmtDay, fmtDayRange, fmtDuration, fmtNumber, fmtRate } from "./format.js";

const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const COUNTS = ["waiting", "queued", "running", "succeeded", "failed", "skipped", "cancelled"];

export function normalizeBatch(raw) {
  const b = { ...raw, id: raw.id ?? raw.batch_id };
  for (const k of COUNTS) b[k] = Number(b[k] ?? 0);
  b.days = Number(b.days ?? 0);
  b.done = b.succeeded + b.failed + b.skipped + b.cancelled;
  return b;
}

/** What a waiting date waits for, from the server's "orders 2026-03-01, orders 2026-03-02 (failed) and 3 more",
 * with its few English words in the page's language. */
export function waitingText(raw) {
  const what = String(raw)
    .replace(/ \((failed|running)\)/g, (m, state) => ` (${t(`state.${state}`)})`)
    .replace(/ and (\d+) more$/, (m, n) => `, ${t("tasks.waiting_more", { n })}`);
  return t("tasks.waiting_for", { what });
}

function el(tag, props = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

export class BatchList {
  /**
   * @param {HTMLOListElement} list
   * @param {{cancel: (id) => void, retry: (id) => void, open: (id) => void}} actions
   */
  constructor(list, actions) {
    this.list = list;
    this.actions = actions;
    this.batches = new Map();
    this.items = new Map();
    this.details = new Map(); // id -> tasks (for opened batches)
    this.expanded = new Set();
    this.skew = null; // browser clock minus server clock, estimated from event timestamps
  }

  get size() {
    return this.batches.size;
  }

  has(id) {
    return this.batches.has(Number(id));
  }

  get(id) {
    return this.batches.get(Number(id));
  }

  /** Add or refresh batches from the API, keeping the list newest first. */
  upsert(...raws) {
    for (const raw of raws) {
      const b = normalizeBatch(raw);
      this.batches.set(Number(b.id), b);
      this.render(b);
    }
    this.order();
  }

  order() {
    const ids = [...this.batches.keys()].sort((a, b) => b - a);
    let prev = null;
    for (const id of ids) {
      const li = this.items.get(id);
      const want = prev ? prev.nextSibling : this.list.firstChild;
      if (li !== want) this.list.insertBefore(li, want);
      prev = li;
    }
  }

  /** Apply one event of the stream; false when it is about a batch we do not show yet. */
  applyEvent(name, ev) {
    const at = Date.parse(ev.at);
    if (!Number.isNaN(at)) {
      const skew = Date.now() - at;
      this.skew = this.skew === null ? skew : Math.min(this.skew, skew);
    }
    const b = this.batches.get(Number(ev.batch_id));
    if (!b) return false;
    const data = ev.data || {};
    const counts = data.counts || (COUNTS.some((k) => k in data) ? data : null);
    if (counts) {
      for (const k of COUNTS) if (k in counts) b[k] = Number(counts[k]);
      b.done = b.succeeded + b.failed + b.skipped + b.cancelled;
    }
    if (name === "batch") {
      b.state = ev.state;
      if (ev.state === "running") {
        b.finished_at = null;
        if (!b.started_at) b.started_at = ev.at;
      }
      if (FINAL.has(ev.state)) {
        b.finished_at = b.finished_at || ev.at;
        b.cancel_requested = false;
        if (b.state === "succeeded" || b.state === "failed") b.queued = b.running = 0;
      }
      if (data.cancel_requested) b.cancel_requested = true;
    } else if (name === "task") {
      if (b.state === "queued") {
        b.state = "running";
        b.started_at = b.started_at || ev.at;
      }
      const tasks = this.details.get(b.id);
      if (tasks) {
        const task = tasks.find((x) => (ev.task_id && x.id === ev.task_id) || x.day === ev.day);
        if (task) {
          task.state = ev.state;
          // Said when the date starts waiting (the batch's expansion); any later state waits for nothing.
          task.waiting_for = ev.state === "waiting" ? data.waiting_for ?? task.waiting_for ?? null : null;
          if (ev.attempt !== null && ev.attempt !== undefined) task.attempt = ev.attempt;
          if (ev.error !== undefined) task.error = ev.error;
          this.renderTasks(b.id);
        }
      }
    }
    this.render(b);
    return true;
  }

  /** Re-draw everything (after a language change). */
  redraw() {
    for (const li of this.items.values()) li.remove();
    this.items.clear();
    for (const b of this.batches.values()) this.render(b);
    this.order();
  }

  /** Advance rate and ETA of running batches. */
  tick() {
    for (const b of this.batches.values()) if (b.state === "running") this.renderStats(b);
  }

  setTasks(id, tasks) {
    this.details.set(Number(id), tasks.slice().sort((a, b) => (a.day < b.day ? -1 : 1)));
    this.renderTasks(Number(id));
  }

  // --- drawing -------------------------------------------------------------------------------------------

  item(b) {
    let li = this.items.get(b.id);
    if (li) return li;
    li = el("li", { class: "batch" });
    li.dataset.id = String(b.id);
    const head = el("div", { class: "batch-head" });
    const toggle = el("button", { type: "button", class: "batch-toggle", "aria-expanded": "false",
      "aria-controls": `batch-${b.id}-tasks` });
    toggle.append(el("span", { class: "chev", "aria-hidden": "true" }), el("span", { class: "batch-id" }),
      el("span", { class: "batch-range" }), el("span", { class: "badge" }));
    toggle.title = t("batch.show", { id: b.id });
    toggle.addEventListener("click", () => this.toggle(b.id));
    const actions = el("div", { class: "batch-actions" });
    const cancel = el("button", { type: "button", class: "btn small cancel" }, t("batch.cancel"));
    cancel.setAttribute("aria-label", `${t("batch.cancel")} · ${t("batch.name", { id: b.id })}`);
    cancel.addEventListener("click", () => this.actions.cancel(b.id, cancel));
    const retry = el("button", { type: "button", class: "btn small retry" }, t("batch.retry"));
    retry.setAttribute("aria-label", `${t("batch.retry")} · ${t("batch.name", { id: b.id })}`);
    retry.addEventListener("click", () => this.actions.retry(b.id, retry));
    actions.append(cancel, retry);
    head.append(toggle, actions);

    const bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0",
      "aria-label": t("batch.name", { id: b.id }) });
    for (const seg of ["succeeded", "skipped", "failed", "cancelled", "running"]) {
      bar.append(el("span", { class: `seg seg-${seg}` }));
    }
    const stats = el("dl", { class: "stats" });
    for (const key of ["done", "waiting", "failed", "skipped", "rate", "eta"]) {
      const wrap = el("div", { class: `stat stat-${key}` });
      wrap.append(el("dt"), el("dd"));
      stats.append(wrap);
    }
    const meta = el("p", { class: "batch-meta" });
    const tasks = el("div", { class: "tasks", id: `batch-${b.id}-tasks`, hidden: "" });
    li.append(head, bar, stats, meta, tasks);
    this.items.set(b.id, li);
    if (this.expanded.has(b.id)) {
      toggle.setAttribute("aria-expanded", "true");
      tasks.hidden = false;
      this.renderTasks(b.id);
    }
    return li;
  }

  render(b) {
    const li = this.item(b);
    const final = FINAL.has(b.state);
    const cancelling = b.cancel_requested && !final;
    li.dataset.state = b.state;
    li.querySelector(".batch-id").textContent = `#${b.id}`;
    li.querySelector(".batch-range").textContent = fmtDayRange(b.start_date, b.end_date);
    const badge = li.querySelector(".badge");
    badge.dataset.state = cancelling ? "cancelling" : b.state;
    badge.textContent = cancelling ? t("state.cancelling") : t(`state.${b.state}`);

    const total = Math.max(b.days, 1);
    const bar = li.querySelector(".progress");
    bar.setAttribute("aria-valuemax", String(b.days));
    bar.setAttribute("aria-valuenow", String(b.done));
    bar.setAttribute("aria-valuetext", t("batch.progress", { done: fmtNumber(b.done), total: fmtNumber(b.days) }));
    for (const seg of ["succeeded", "skipped", "failed", "cancelled", "running"]) {
      li.querySelector(`.seg-${seg}`).style.width = `${(100 * b[seg]) / total}%`;
    }
    li.querySelector(".cancel").hidden = final || cancelling;
    const retry = li.querySelector(".retry");
    retry.hidden = !(final && (b.failed > 0 || (b.state === "cancelled" && b.cancelled > 0)));
    // Retry requeues a cancelled batch's cancelled dates too: the button says so.
    const retryLabel = b.state === "cancelled" ? t("batch.retryCancelled") : t("batch.retry");
    retry.textContent = retryLabel;
    retry.setAttribute("aria-label", `${retryLabel} · ${t("batch.name", { id: b.id })}`);

    const meta = li.querySelector(".batch-meta");
    const parts = [`${t("batch.source")}: ${b.source ?? "default"}`, `${t("batch.created")} ${fmtDateTime(b.created_at)}`];
    if (b.force) parts.push(t("batch.forced"));
    meta.textContent = parts.join(" · ");
    this.renderStats(b);
  }

  renderStats(b) {
    const li = this.items.get(b.id);
    if (!li) return;
    const final = FINAL.has(b.state);
    const serverNow = Date.now() - (this.skew ?? 0);
    const started = b.started_at ? Date.parse(b.started_at) : NaN;
    const ended = b.finished_at ? Date.parse(b.finished_at) : serverNow;
    const elapsedMs = Number.isNaN(started) ? null : Math.max(0, ended - started);
    const worked = b.succeeded + b.failed; // skipped dates cost nothing and would flatter the rate
    // A cancelled batch stopped part-way (and maybe long after its last date ran): no rate to speak of.
    const rate = b.state !== "cancelled" && elapsedMs && elapsedMs > 300 && worked > 0
      ? worked / (elapsedMs / 1000) : null;
    const remaining = b.waiting + b.queued + b.running;
    let last;
    if (final) last = [t("batch.took"), fmtDuration(elapsedMs)];
    else last = [t("batch.eta"), rate && remaining ? fmtDuration((remaining / rate) * 1000) : "–"];
    const values = {
      done: [t("batch.done"), `${fmtNumber(b.done)} / ${fmtNumber(b.days)}`],
      waiting: [t("batch.waiting"), fmtNumber(b.waiting)],
      failed: [t("batch.failed"), fmtNumber(b.failed)],
      skipped: [t("batch.skipped"), fmtNumber(b.skipped)],
      rate: [t("batch.rate"), fmtRate(rate)],
      eta: last,
    };
    for (const [key, [label, value]] of Object.entries(values)) {
      const wrap = li.querySelector(`.stat-${key}`);
      wrap.querySelector("dt").textContent = label;
      wrap.querySelector("dd").textContent = value;
    }
    li.querySelector(".stat-failed").classList.toggle("bad", b.failed > 0);
    li.querySelector(".stat-waiting").hidden = !(b.waiting > 0); // only batches of a source built on others wait
  }

  toggle(id) {
    const li = this.items.get(id);
    const button = li.querySelector(".batch-toggle");
    const box = li.querySelector(".tasks");
    const open = !this.expanded.has(id);
    if (open) this.expanded.add(id);
    else this.expanded.delete(id);
    button.setAttribute("aria-expanded", String(open));
    box.hidden = !open;
    if (open) {
      this.renderTasks(id);
      this.actions.open(id);
    }
  }

  renderTasks(id) {
    const li = this.items.get(id);
    if (!li || !this.expanded.has(id)) return;
    const box = li.querySelector(".tasks");
    const tasks = this.details.get(id);
    if (!tasks) {
      box.replaceChildren(el("p", { class: "hint" }, t("tasks.loading")));
      return;
    }
    if (tasks.length === 0 && this.get(id)?.pruned_at) {
      // Retention removed the per-date rows; the counts above and the calendar's day records stay.
      box.replaceChildren(el("p", { class: "hint" }, t("tasks.pruned")));
      return;
    }
    const table = el("table", { class: "task-table" });
    table.append(el("caption", { class: "vh" }, t("tasks.caption", { id })));
    const head = el("tr");
    for (const k of ["day", "state", "attempts", "rows", "duration", "details"]) {
      head.append(el("th", { scope: "col", class: `col-${k}` }, t(`tasks.${k}`)));
    }
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    for (const task of tasks) {
      const row = el("tr");
      row.dataset.day = task.day;
      row.dataset.state = task.state;
      const badge = el("span", { class: "badge" }, t(`state.${task.state}`));
      badge.dataset.state = task.state;
      const state = el("td");
      state.append(badge);
      let duration = task.duration_ms;
      if ((duration === null || duration === undefined) && task.started_at && task.finished_at) {
        duration = Date.parse(task.finished_at) - Date.parse(task.started_at);
      }
      row.append(
        el("td", { class: "col-day" }, fmtDay(task.day)),
        state,
        el("td", { class: "num" }, task.max_attempts ? `${task.attempt ?? 0} / ${task.max_attempts}` : String(task.attempt ?? 0)),
        el("td", { class: "num" }, task.rows_synced === null || task.rows_synced === undefined ? "–" : fmtNumber(task.rows_synced)),
        el("td", { class: "num" }, fmtDuration(duration)),
        // A failed date says why; a waiting one what for.
        el("td", { class: "col-error" }, task.state === "waiting" && task.waiting_for
          ? waitingText(task.waiting_for) : task.error || ""),
      );
      tbody.append(row);
    }
    table.append(thead, tbody);
    const wrap = el("div", { class: "table-scroll" });
    wrap.append(table);
    box.replaceChildren(wrap);
  }
}
