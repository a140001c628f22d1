// A contributions-style calendar: one cell per date, a column per week, coloured by the date's sync status.
// Hover or focus a cell for its details; drag (or click, then shift-click) to select a stretch, which the
// page turns into a backfill. Keyboard: arrows move (a column is a week), Shift+arrows extend, Enter selects.

import { t, locale } from "./i18n.js";
import { addDays, fmtDateTime, fmtDayLong, fmtMonth, fmtNumber, fmtWeekday, parseDay, spanDays }
  from "./format.js";

/** The statuses a cell can show, in the legend's order: the one list the legend is drawn from. "stale" is a synced
 * date that a forced re-sync of a date it is built on (DATESYNC_<NAME>_AFTER) has outdated. */
export const LEGEND = ["success", "stale", "failed", "running", "missing"];

/** Fill the legend list; its labels carry data-i18n, so a language switch relabels them with the rest. */
export function renderLegend(list) {
  list.replaceChildren(...LEGEND.map((status) => {
    const item = el("li");
    item.append(el("span", { class: "swatch", dataset: { status } }),
      el("span", { dataset: { i18n: `status.${status}` } }, t(`status.${status}`)));
    return item;
  }));
}

function firstDayOfWeek() {
  try {
    const loc = new Intl.Locale(locale());
    const info = loc.getWeekInfo ? loc.getWeekInfo() : loc.weekInfo;
    if (info && info.firstDay) return info.firstDay % 7; // Intl: 1 = Monday … 7 = Sunday; JS: 0 = Sunday
  } catch {
    // older engines: fall through
  }
  return locale().toLowerCase().startsWith("en-us") ? 0 : 1;
}

function el(tag, props = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Heatmap {
  /**
   * @param {HTMLElement} scroller  the scrolling box the table goes into
   * @param {HTMLElement} tip       the tooltip element (positioned inside the scroller's offset parent)
   * @param {(start: string, end: string, stats: {days: number, missing: number, failed: number, stale: number})
   *   => void} onSelect
   */
  constructor(scroller, tip, onSelect) {
    this.scroller = scroller;
    this.tip = tip;
    this.onSelect = onSelect;
    this.records = new Map();
    this.cells = new Map();
    this.from = null;
    this.to = null;
    this.anchor = null;
    this.end = null;
    this.dragging = false;
    this.table = null;
    this.bindPointer();
    new ResizeObserver(() => this.fit()).observe(scroller);
  }

  /** Draw [from, to] with the given records (a Map day → Day record). */
  show(from, to, records) {
    this.records = records;
    if (this.table && this.from === from && this.to === to) {
      // Same days: repaint in place, so that focus, selection and scrolling stay where the user left them.
      for (const [day, cell] of this.cells) this.paint(cell, day);
      if (this.tipDay && this.cells.has(this.tipDay)) this.showTip(this.cells.get(this.tipDay));
      return;
    }
    this.from = from;
    this.to = to;
    this.render();
    this.scroller.scrollLeft = this.scroller.scrollWidth;
  }

  render() {
    const { from, to } = this;
    const focused = this.table?.contains(document.activeElement) ? document.activeElement.dataset.day : null;
    const weekStart = firstDayOfWeek();
    const lead = (parseDay(from).getUTCDay() - weekStart + 7) % 7;
    const gridStart = addDays(from, -lead);
    const weeks = Math.ceil(spanDays(gridStart, to) / 7);
    const focusDay = this.end && this.end >= from && this.end <= to ? this.end : to;

    const table = el("table", { class: "heat-table", role: "grid", "aria-label": t("heat.label"),
      "aria-multiselectable": "true" });

    // Month labels: one header cell per month, spanning its weeks.
    const head = el("tr");
    head.append(el("td", { class: "corner" }));
    let spanStart = 0;
    let label = "";
    const flush = (endWeek) => {
      if (endWeek <= spanStart) return;
      const span = endWeek - spanStart;
      const th = el("th", { scope: "colgroup", colspan: String(span), class: "month" });
      // A month with a single column here has no room for its name: keep it for screen readers only.
      th.append(span >= 2 ? document.createTextNode(label) : el("span", { class: "vh" }, label));
      head.append(th);
    };
    for (let w = 0; w < weeks; w++) {
      const weekFirst = addDays(gridStart, w * 7);
      const shown = weekFirst < from ? from : weekFirst;
      const monthStart = w === 0 || Array.from({ length: 7 }, (_, i) => addDays(weekFirst, i))
        .some((d) => d.endsWith("-01") && d >= from && d <= to);
      if (monthStart) {
        flush(w);
        spanStart = w;
        const first = w === 0 ? shown : Array.from({ length: 7 }, (_, i) => addDays(weekFirst, i))
          .find((d) => d.endsWith("-01"));
        label = fmtMonth(first);
      }
    }
    flush(weeks);
    const thead = el("thead");
    thead.append(head);

    const tbody = el("tbody");
    this.cells = new Map();
    for (let r = 0; r < 7; r++) {
      const row = el("tr");
      const rowDay = addDays(gridStart, r);
      row.append(el("th", { scope: "row", class: r % 2 ? "wd" : "wd faint" }, fmtWeekday(rowDay)));
      for (let w = 0; w < weeks; w++) {
        const day = addDays(gridStart, w * 7 + r);
        if (day < from || day > to) {
          row.append(el("td", { class: "pad" }));
          continue;
        }
        const cell = el("td", { class: "cell", tabindex: day === focusDay ? "0" : "-1",
          "aria-selected": "false", dataset: { day } });
        this.paint(cell, day);
        this.cells.set(day, cell);
        row.append(cell);
      }
      tbody.append(row);
    }
    table.append(thead, tbody);
    table.addEventListener("keydown", (e) => this.onKey(e));
    table.addEventListener("focusin", (e) => {
      const cell = e.target.closest?.("td.cell");
      if (cell) this.showTip(cell);
    });
    table.addEventListener("focusout", () => this.hideTip());
    this.scroller.replaceChildren(table);
    this.table = table;
    this.weeks = weeks;
    this.fit();
    this.highlight();
    if (focused && this.cells.has(focused)) this.cells.get(focused).focus({ preventScroll: true });
  }

  /** Size the cells to fill the box, between 10 and 22 px; below that the box scrolls sideways. */
  fit() {
    if (!this.table) return;
    const label = this.table.querySelector("th.wd")?.offsetWidth ?? 32;
    const room = this.scroller.clientWidth - label - 10;
    const size = Math.max(10, Math.min(22, Math.floor(room / this.weeks) - 3));
    this.table.style.setProperty("--cell", `${size}px`);
  }

  status(day) {
    const record = this.records.get(day);
    // The ledger keeps a stale date's status "success" (its data is there) and says when it went stale.
    if (record?.status === "success" && record.stale_since) return "stale";
    return record?.status || "missing";
  }

  paint(cell, day) {
    const status = this.status(day);
    cell.dataset.status = status;
    cell.setAttribute("aria-label", `${fmtDayLong(day)}: ${t(`status.${status}`)}`);
  }

  /** Merge a change to one date (from the event stream) and repaint its cell. */
  update(day, patch) {
    const record = { ...(this.records.get(day) || { day }), ...patch };
    this.records.set(day, record);
    const cell = this.cells.get(day);
    if (cell) {
      this.paint(cell, day);
      if (this.tipDay === day) this.showTip(cell);
    }
  }

  // --- selection ---------------------------------------------------------------------------------------

  range() {
    if (!this.anchor || !this.end) return null;
    return this.anchor <= this.end ? [this.anchor, this.end] : [this.end, this.anchor];
  }

  highlight() {
    const r = this.range();
    for (const [day, cell] of this.cells) {
      const on = !!r && day >= r[0] && day <= r[1];
      cell.classList.toggle("sel", on);
      cell.setAttribute("aria-selected", on ? "true" : "false");
    }
  }

  commit() {
    const r = this.range();
    if (!r) return;
    let missing = 0;
    let failed = 0;
    let stale = 0;
    for (let d = r[0]; d <= r[1]; d = addDays(d, 1)) {
      const s = this.status(d);
      if (s === "missing") missing += 1;
      else if (s === "failed") failed += 1;
      else if (s === "stale") stale += 1;
    }
    this.onSelect(r[0], r[1], { days: spanDays(r[0], r[1]), missing, failed, stale });
  }

  clearSelection() {
    this.anchor = null;
    this.end = null;
    this.highlight();
  }

  cellAt(x, y) {
    const node = document.elementFromPoint(x, y);
    return node?.closest?.("td.cell") || null;
  }

  bindPointer() {
    this.scroller.addEventListener("pointerdown", (e) => {
      const cell = e.target.closest?.("td.cell");
      if (!cell || e.button !== 0) return;
      if (e.pointerType === "mouse") e.preventDefault(); // no text selection while dragging
      const day = cell.dataset.day;
      if (e.shiftKey && this.anchor) {
        this.end = day;
      } else {
        this.anchor = day;
        this.end = day;
      }
      this.dragging = true;
      this.focusCell(cell);
      this.highlight();
    });
    this.scroller.addEventListener("pointermove", (e) => {
      if (!this.dragging) return;
      const cell = this.cellAt(e.clientX, e.clientY);
      if (cell && cell.dataset.day !== this.end) {
        this.end = cell.dataset.day;
        this.focusCell(cell);
        this.highlight();
      }
    });
    const finish = () => {
      if (!this.dragging) return;
      this.dragging = false;
      this.commit();
    };
    window.addEventListener("pointerup", finish);
    window.addEventListener("pointercancel", finish);
    this.scroller.addEventListener("pointerover", (e) => {
      const cell = e.target.closest?.("td.cell");
      if (cell) this.showTip(cell);
    });
    this.scroller.addEventListener("pointerleave", () => {
      if (!this.scroller.contains(document.activeElement)) this.hideTip();
    });
  }

  focusCell(cell) {
    for (const c of this.table.querySelectorAll('td.cell[tabindex="0"]')) c.tabIndex = -1;
    cell.tabIndex = 0;
    cell.focus({ preventScroll: false });
  }

  onKey(e) {
    const cell = e.target.closest?.("td.cell");
    if (!cell) return;
    const day = cell.dataset.day;
    const moves = { ArrowLeft: -7, ArrowRight: 7, ArrowUp: -1, ArrowDown: 1 };
    let target = null;
    if (e.key in moves) target = addDays(day, moves[e.key]);
    else if (e.key === "Home") target = this.from;
    else if (e.key === "End") target = this.to;
    if (target !== null) {
      e.preventDefault();
      if (target < this.from) target = this.from;
      if (target > this.to) target = this.to;
      const next = this.cells.get(target);
      if (!next) return;
      this.focusCell(next);
      if (e.shiftKey) {
        if (!this.anchor) this.anchor = day;
        this.end = target;
        this.highlight();
        this.commit();
      }
      return;
    }
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      if (!(e.shiftKey && this.anchor)) this.anchor = day;
      this.end = day;
      this.highlight();
      this.commit();
    } else if (e.key === "Escape") {
      this.clearSelection();
      this.hideTip();
    }
  }

  // --- tooltip -------------------------------------------------------------------------------------------

  showTip(cell) {
    const day = cell.dataset.day;
    const record = this.records.get(day);
    const status = this.status(day);
    this.tipDay = day;
    const rows = [[t("tip.attempts"), record?.attempts], [t("tip.rows"), record?.rows_synced],
      [t("tip.synced_at"), record?.synced_at ? fmtDateTime(record.synced_at) : null],
      [t("tip.batch"), record?.batch_id ? `#${record.batch_id}` : null],
      [t("tip.stale_since"), status === "stale" ? fmtDateTime(record.stale_since) : null]];
    const body = [el("strong", {}, fmtDayLong(day)),
      el("span", { class: "tip-status", dataset: { status } }, t(`status.${status}`))];
    const dl = el("dl");
    for (const [k, v] of rows) {
      if (v === null || v === undefined) continue;
      dl.append(el("dt", {}, k), el("dd", {}, typeof v === "number" ? fmtNumber(v) : String(v)));
    }
    if (dl.childElementCount) body.push(dl);
    if (status === "stale") {
      // The cause is known when this page saw the re-sync's event; the day record itself only has the time.
      const by = record.stale_by;
      body.push(el("p", { class: "tip-note" }, by
        ? t("tip.stale_by", { upstream: by.upstream, day: by.upstream_day, batch: by.batch_id })
        : t("tip.stale_hint")));
    }
    if (record?.error) {
      const err = String(record.error);
      body.push(el("p", { class: "tip-error" }, err.length > 240 ? `${err.slice(0, 240)}…` : err));
    }
    this.tip.replaceChildren(...body);
    this.tip.hidden = false;
    const host = this.tip.offsetParent || document.body;
    const hostBox = host.getBoundingClientRect();
    const box = cell.getBoundingClientRect();
    const tipBox = this.tip.getBoundingClientRect();
    let left = box.left - hostBox.left + box.width / 2 - tipBox.width / 2;
    left = Math.max(4, Math.min(left, hostBox.width - tipBox.width - 4));
    let top = box.top - hostBox.top - tipBox.height - 8;
    if (top < 0) top = box.bottom - hostBox.top + 8;
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${top}px`;
  }

  hideTip() {
    this.tip.hidden = true;
    this.tipDay = null;
  }
}
