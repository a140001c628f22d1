// Calendar-date arithmetic on "YYYY-MM-DD" strings (in UTC, so no daylight-saving surprises) and Intl
// formatting of dates, times, numbers and durations in the page's locale.

import { locale, t } from "./i18n.js";

const DAY_MS = 86_400_000;

export function parseDay(iso) {
  return new Date(`${iso}T00:00:00Z`);
}

export function dayIso(date) {
  return date.toISOString().slice(0, 10);
}

export function addDays(iso, n) {
  return dayIso(new Date(parseDay(iso).getTime() + n * DAY_MS));
}

/** Days from a to b, both included (negative when b is before a). */
export function spanDays(a, b) {
  return Math.round((parseDay(b) - parseDay(a)) / DAY_MS) + 1;
}

export function isDay(value) {
  return /^\d{4}-\d{2}-\d{2}$/.test(value || "") && !Number.isNaN(parseDay(value).getTime());
}

/** Today's date where the user is. */
export function todayIso() {
  const now = new Date();
  const y = now.getFullYear();
  const m = String(now.getMonth() + 1).padStart(2, "0");
  const d = String(now.getDate()).padStart(2, "0");
  return `${y}-${m}-${d}`;
}

const cache = new Map();

function fmt(kind, options) {
  const key = `${locale()}|${kind}`;
  if (!cache.has(key)) cache.set(key, kind.startsWith("num") ? new Intl.NumberFormat(locale(), options)
    : new Intl.DateTimeFormat(locale(), options));
  return cache.get(key);
}

/** A calendar date, e.g. "Oct 3, 2025" / "2025年10月3日". */
export function fmtDay(iso, style = "medium") {
  if (!iso) return "–";
  // A date the browser cannot read ("4713-01-01 BC", "infinity": rows older than the database's date check) is
  // shown as the API wrote it; Intl would throw on it and break the whole list.
  if (Number.isNaN(parseDay(iso).getTime())) return iso;
  return fmt(`day-${style}`, { dateStyle: style, timeZone: "UTC" }).format(parseDay(iso));
}

export function fmtDayLong(iso) {
  return fmt("day-long", { weekday: "short", year: "numeric", month: "long", day: "numeric", timeZone: "UTC" })
    .format(parseDay(iso));
}

export function fmtMonth(iso) {
  return fmt("month", { month: "short", timeZone: "UTC" }).format(parseDay(iso));
}

export function fmtWeekday(iso) {
  return fmt("weekday", { weekday: "short", timeZone: "UTC" }).format(parseDay(iso));
}

/** A range of dates, shortened where the locale allows ("Oct 1 – 9, 2025"). */
export function fmtDayRange(a, b) {
  if (a === b) return fmtDay(a);
  const f = fmt("day-medium", { dateStyle: "medium", timeZone: "UTC" });
  const readable = !Number.isNaN(parseDay(a).getTime() + parseDay(b).getTime());
  return readable && f.formatRange ? f.formatRange(parseDay(a), parseDay(b)) : `${fmtDay(a)} – ${fmtDay(b)}`;
}

/** A timestamp in the user's time zone. */
export function fmtDateTime(ts) {
  if (!ts) return "–";
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return "–";
  return fmt("datetime", { dateStyle: "medium", timeStyle: "short" }).format(date);
}

export function fmtNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return fmt(`num-${digits}`, { maximumFractionDigits: digits }).format(n);
}

function unit(name, value, digits = 0) {
  return fmt(`num-unit-${name}-${digits}`, {
    style: "unit", unit: name, unitDisplay: "narrow", maximumFractionDigits: digits,
  }).format(value);
}

/** A duration in milliseconds: "212ms", "3.4s", "2m 5s", "1h 3m" (in the locale's units). */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms) || ms < 0) return "–";
  if (ms < 1000) return unit("millisecond", Math.round(ms));
  const s = ms / 1000;
  if (s < 60) return unit("second", s, s < 10 ? 1 : 0);
  const totalMin = Math.floor(s / 60);
  if (totalMin < 60) return `${unit("minute", totalMin)} ${unit("second", Math.floor(s % 60))}`;
  const h = Math.floor(totalMin / 60);
  return `${unit("hour", h)} ${unit("minute", totalMin % 60)}`;
}

/** Dates per second, always shown per minute: one unit, so that two batches' rates compare at a glance. */
export function fmtRate(perSecond) {
  if (!perSecond || !Number.isFinite(perSecond)) return "–";
  const perMinute = perSecond * 60;
  return t("rate.min", { v: fmtNumber(perMinute, perMinute < 10 ? 1 : 0) });
}

/** Call fn at most once per `ms`, always after the latest request (a trailing throttle). */
export function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}
