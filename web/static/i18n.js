// The page's words in English and Chinese. The language follows the browser until the user picks one with the
// switch (kept in localStorage); dates and numbers are formatted with Intl in the user's locale.

const STORE_KEY = "datesync.lang";

const STRINGS = {
  en: {
    "doc.title": "datesync · sync status",
    "skip": "Skip to content",
    "tagline": "sync status",
    "language": "Language",
    "conn.connecting": "Connecting…",
    "conn.open": "Live",
    "conn.reconnecting": "Reconnecting…",
    "conn.offline": "Offline, retrying",
    "conn.title": "Live updates from the server (Server-Sent Events)",
    "token.summary": "API token",
    "token.label": "Bearer token for starting, cancelling and retrying",
    "token.hint": "Needed when the server sets DATESYNC_API_TOKEN. Kept in this browser only.",
    "token.saved": "Token saved in this browser.",
    "token.cleared": "Token removed.",
    "cards.title": "Summary",
    "cards.synced": "Dates synced",
    "cards.failed": "Failed",
    "cards.running": "Running",
    "cards.queued": "Queued",
    "cards.last": "Last success",
    "cards.never": "Never",
    "cards.waiting.one": "+ {n} waiting for upstream",
    "cards.waiting.other": "+ {n} waiting for upstream",
    "cards.stale.one": "{n} stale",
    "cards.stale.other": "{n} stale",
    "form.title": "Start a backfill",
    "form.start": "Start date",
    "form.end": "End date",
    "form.source": "Source",
    "form.force": "Force: sync again dates already synced",
    "form.with_upstream": "With upstream",
    "form.with_upstream.hint": "First sync the dates of the sources this one is built on (DATESYNC_<NAME>_AFTER).",
    "form.cascade": "Cascade",
    "form.cascade.hint": "Afterwards re-run, forced, the dates of the sources built on these.",
    "form.submit": "Start sync",
    "form.sending": "Starting…",
    "form.days.one": "{n} day",
    "form.days.other": "{n} days",
    "form.invalid": "Please correct the marked field.",
    "form.started.one": "Batch sync started: {n} day will be synced",
    "form.started.other": "Batch sync started: {n} days will be synced",
    "form.deduplicated": "The same batch is already running: batch #{id}",
    "form.more": "{first}. {rest}",
    "form.waiting.one": "{n} of its days waits for upstream dates not synced yet, and starts once they are (or tick “With upstream”).",
    "form.waiting.other": "{n} of its days wait for upstream dates not synced yet, and start once they are (or tick “With upstream”).",
    "form.linked.upstream": "Batch #{id} requested for {source} {range} first.",
    "form.linked.downstream": "Batch #{id} requested for {source} {range} after it (cascade).",
    "heat.title": "Calendar",
    "heat.period": "Show",
    "heat.source": "Source",
    "heat.year": "Last 12 months",
    "heat.range": "Dates in the form",
    "heat.label": "Sync status of each date",
    "heat.help": "Drag across days, or click one and shift-click another, to fill the form with that stretch. Arrow keys move, Shift+arrows extend, Enter selects.",
    "heat.selected": "Selected {from} – {to}: {n}, {missing} not synced, {failed} failed. The form is filled; press Start sync.",
    "heat.selected.stale": "{stale} of them stale: tick Force to refresh them.",
    "heat.loading": "Loading the calendar…",
    "heat.legend": "Legend",
    "status.success": "Synced",
    "status.failed": "Failed",
    "status.running": "Running",
    "status.missing": "Not synced",
    "status.stale": "Stale",
    "state.waiting": "Waiting",
    "state.queued": "Queued",
    "state.running": "Running",
    "state.succeeded": "Succeeded",
    "state.failed": "Failed",
    "state.cancelled": "Cancelled",
    "state.skipped": "Skipped",
    "state.cancelling": "Cancelling…",
    "tip.attempts": "Attempts",
    "tip.rows": "Rows",
    "tip.synced_at": "Synced at",
    "tip.updated_at": "Updated",
    "tip.error": "Error",
    "tip.batch": "Batch",
    "tip.stale_since": "Stale since",
    "tip.stale_by": "Made stale by the re-sync of {upstream} {day} (batch #{batch}).",
    "tip.stale_hint": "A date it is built on was re-synced after it: sync it again with Force to refresh it.",
    "batches.title": "Batches",
    "batches.empty": "No batches yet. Start one with the form.",
    "batches.more": "Show more",
    "batches.refresh": "Refresh",
    "batch.name": "Batch #{id}",
    "batch.progress": "{done} of {total} dates done",
    "batch.done": "Done",
    "batch.failed": "Failed",
    "batch.skipped": "Skipped",
    "batch.waiting": "Waiting",
    "batch.rate": "Rate",
    "batch.eta": "ETA",
    "batch.took": "Took",
    "batch.created": "Created",
    "batch.source": "Source",
    "batch.forced": "force",
    "batch.cancel": "Cancel",
    "batch.retry": "Retry failed",
    "batch.retryCancelled": "Retry failed and cancelled",
    "batch.show": "Show the dates of batch #{id}",
    "rate.min": "{v} dates/min",
    "tasks.caption": "Dates of batch #{id}",
    "tasks.day": "Date",
    "tasks.state": "State",
    "tasks.attempts": "Attempts",
    "tasks.rows": "Rows",
    "tasks.duration": "Duration",
    "tasks.details": "Details",
    "tasks.waiting_for": "Waiting for {what}",
    "tasks.waiting_more": "and {n} more",
    "tasks.loading": "Loading…",
    "tasks.pruned": "Per-date details were removed by retention (DATESYNC_RETENTION); the counts above and each date's record in the calendar stay.",
    "err.network": "Cannot reach the server; is it running?",
    "err.auth": "The API needs a token: enter it under “API token” at the top of the page.",
    "footer.api": "API description",
  },
  zh: {
    "doc.title": "datesync · 同步状态",
    "skip": "跳到主要内容",
    "tagline": "同步状态",
    "language": "语言",
    "conn.connecting": "连接中…",
    "conn.open": "实时",
    "conn.reconnecting": "重新连接中…",
    "conn.offline": "已断开，正在重试",
    "conn.title": "来自服务器的实时更新（Server-Sent Events）",
    "token.summary": "API 令牌",
    "token.label": "用于发起、取消和重试的 Bearer 令牌",
    "token.hint": "服务器设置了 DATESYNC_API_TOKEN 时需要。仅保存在此浏览器中。",
    "token.saved": "令牌已保存在此浏览器中。",
    "token.cleared": "令牌已删除。",
    "cards.title": "概览",
    "cards.synced": "已同步日期",
    "cards.failed": "失败",
    "cards.running": "同步中",
    "cards.queued": "排队中",
    "cards.last": "最近成功",
    "cards.never": "从未",
    "cards.waiting.one": "另有 {n} 天等待上游",
    "cards.waiting.other": "另有 {n} 天等待上游",
    "cards.stale.one": "{n} 天待刷新",
    "cards.stale.other": "{n} 天待刷新",
    "form.title": "批量同步",
    "form.start": "开始日期",
    "form.end": "结束日期",
    "form.source": "数据源",
    "form.force": "强制：重新同步已成功的日期",
    "form.with_upstream": "连同上游",
    "form.with_upstream.hint": "先同步此数据源所依赖的数据源的相应日期（DATESYNC_<NAME>_AFTER）。",
    "form.cascade": "级联",
    "form.cascade.hint": "之后强制重新同步依赖这些日期的下游数据源。",
    "form.submit": "开始同步",
    "form.sending": "正在提交…",
    "form.days.one": "{n} 天",
    "form.days.other": "{n} 天",
    "form.invalid": "请修改标出的字段。",
    "form.started.one": "批量同步任务已启动，将同步 {n} 天的数据",
    "form.started.other": "批量同步任务已启动，将同步 {n} 天的数据",
    "form.deduplicated": "相同的批量任务已在运行：#{id}",
    "form.more": "{first}。{rest}",
    "form.waiting.one": "其中 {n} 天需等待尚未同步的上游日期，上游同步后自动开始（或勾选“连同上游”）。",
    "form.waiting.other": "其中 {n} 天需等待尚未同步的上游日期，上游同步后自动开始（或勾选“连同上游”）。",
    "form.linked.upstream": "已先为 {source} {range} 请求批次 #{id}。",
    "form.linked.downstream": "已为 {source} {range} 请求批次 #{id}，在其之后运行（级联）。",
    "heat.title": "日历",
    "heat.period": "显示",
    "heat.source": "数据源",
    "heat.year": "最近 12 个月",
    "heat.range": "表单中的日期范围",
    "heat.label": "每个日期的同步状态",
    "heat.help": "拖选一段日期（或点击一天后按住 Shift 点击另一天），即可把这段日期填入表单。方向键移动，Shift+方向键扩展，回车选择。",
    "heat.selected": "已选择 {from} – {to}：{n}，{missing} 天未同步，{failed} 天失败。已填入表单，点击“开始同步”即可。",
    "heat.selected.stale": "其中 {stale} 天待刷新：勾选“强制”即可重新同步。",
    "heat.loading": "正在加载日历…",
    "heat.legend": "图例",
    "status.success": "已同步",
    "status.failed": "失败",
    "status.running": "同步中",
    "status.missing": "未同步",
    "status.stale": "待刷新",
    "state.waiting": "等待上游",
    "state.queued": "排队中",
    "state.running": "运行中",
    "state.succeeded": "成功",
    "state.failed": "失败",
    "state.cancelled": "已取消",
    "state.skipped": "已跳过",
    "state.cancelling": "正在取消…",
    "tip.attempts": "尝试次数",
    "tip.rows": "行数",
    "tip.synced_at": "同步时间",
    "tip.updated_at": "更新时间",
    "tip.error": "错误",
    "tip.batch": "批次",
    "tip.stale_since": "待刷新自",
    "tip.stale_by": "因上游 {upstream} {day} 重新同步（批次 #{batch}）而待刷新。",
    "tip.stale_hint": "它所依赖的日期在它之后重新同步过：勾选“强制”再同步一次即可刷新。",
    "batches.title": "批次",
    "batches.empty": "还没有批次。用上面的表单发起一个。",
    "batches.more": "加载更多",
    "batches.refresh": "刷新",
    "batch.name": "批次 #{id}",
    "batch.progress": "已完成 {done} / {total} 天",
    "batch.done": "完成",
    "batch.failed": "失败",
    "batch.skipped": "跳过",
    "batch.waiting": "等待上游",
    "batch.rate": "速率",
    "batch.eta": "预计剩余",
    "batch.took": "耗时",
    "batch.created": "创建于",
    "batch.source": "数据源",
    "batch.forced": "强制",
    "batch.cancel": "取消",
    "batch.retry": "重试失败项",
    "batch.retryCancelled": "重试失败和已取消项",
    "batch.show": "查看批次 #{id} 的日期",
    "rate.min": "{v} 天/分钟",
    "tasks.caption": "批次 #{id} 的日期",
    "tasks.day": "日期",
    "tasks.state": "状态",
    "tasks.attempts": "尝试",
    "tasks.rows": "行数",
    "tasks.duration": "耗时",
    "tasks.details": "说明",
    "tasks.waiting_for": "等待 {what}",
    "tasks.waiting_more": "及另外 {n} 个",
    "tasks.loading": "加载中…",
    "tasks.pruned": "按日期的明细已按保留期限（DATESYNC_RETENTION）删除；上方的计数和日历中每个日期的记录仍然保留。",
    "err.network": "无法连接服务器，请确认它正在运行。",
    "err.auth": "API 需要令牌：请在页面顶部的“API 令牌”中填写。",
    "footer.api": "API 说明",
  },
};

export const LANGS = Object.keys(STRINGS);

function browserLocale() {
  return (navigator.languages && navigator.languages[0]) || navigator.language || "en";
}

function stored() {
  try {
    return localStorage.getItem(STORE_KEY);
  } catch {
    return null; // storage blocked (private mode, policies): follow the browser
  }
}

function initialLang() {
  const saved = stored();
  if (saved && saved in STRINGS) return saved;
  return browserLocale().toLowerCase().startsWith("zh") ? "zh" : "en";
}

let current = initialLang();
const listeners = new Set();

export function lang() {
  return current;
}

/** The BCP 47 locale for Intl: the browser's own when it matches the chosen language, else a fitting one. */
export function locale() {
  const nav = browserLocale();
  const isZh = nav.toLowerCase().startsWith("zh");
  if (current === "zh") return isZh ? nav : "zh-CN";
  return isZh ? "en" : nav;
}

/** What the API is told, so that its messages come back in the page's language. */
export function acceptLanguage() {
  return current === "zh" ? "zh-CN,zh;q=0.9,en;q=0.5" : "en";
}

export function t(key, vars = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

const plurals = new Map();

/** A counted phrase: keys "<key>.one" and "<key>.other", with {n} formatted in the locale. */
export function tn(key, n) {
  const loc = locale();
  if (!plurals.has(loc)) plurals.set(loc, new Intl.PluralRules(loc));
  const form = plurals.get(loc).select(n) === "one" ? "one" : "other";
  return t(`${key}.${form}`, { n: new Intl.NumberFormat(loc).format(n) });
}

/** Fill every [data-i18n] element's text and every [data-i18n-attr="attr:key;…"] attribute under root. */
export function apply(root = document) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":");
      if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
  if (root === document) {
    document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
    document.title = t("doc.title");
  }
}

export function setLang(next) {
  if (!(next in STRINGS) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORE_KEY, next);
  } catch {
    // not persisted; the switch still works for this visit
  }
  apply();
  for (const fn of listeners) fn(next);
}

export function onLangChange(fn) {
  listeners.add(fn);
}
