// The live event stream. EventSource retries a dropped connection by itself and resends Last-Event-ID; when
// it gives up (an HTTP error, a proxy answering for a dead server) we open a new one with ?last_event_id= so
// that the server replays exactly what we missed, backing off up to 30 s.

export class Stream {
  /**
   * @param {string} url
   * @param {{snapshot: (data: object) => void, event: (name: string, data: object) => void,
   *          state: (state: "connecting"|"open"|"reconnecting"|"offline") => void,
   *          resumed: () => void}} on
   */
  constructor(url, on) {
    this.url = url;
    this.on = on;
    this.lastId = null;
    this.failures = 0;
    this.es = null;
    this.timer = null;
    this.everOpened = false;
  }

  start() {
    this.connect();
  }

  /** The URL for a new connection: resume after the last event we saw. */
  nextUrl() {
    if (this.lastId === null) return this.url;
    const sep = this.url.includes("?") ? "&" : "?";
    return `${this.url}${sep}last_event_id=${encodeURIComponent(this.lastId)}`;
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.on.state(this.everOpened ? "reconnecting" : "connecting");
    const es = new EventSource(this.nextUrl());
    this.es = es;
    es.addEventListener("open", () => {
      if (es !== this.es) return;
      const resumed = this.everOpened;
      this.everOpened = true;
      this.failures = 0;
      this.on.state("open");
      if (resumed) this.on.resumed();
    });
    es.addEventListener("snapshot", (e) => this.deliver(es, "snapshot", e));
    es.addEventListener("batch", (e) => this.deliver(es, "batch", e));
    es.addEventListener("task", (e) => this.deliver(es, "task", e));
    es.addEventListener("day", (e) => this.deliver(es, "day", e)); // a date made stale by an upstream re-sync
    es.addEventListener("error", () => {
      if (es !== this.es) return;
      if (es.readyState === EventSource.CLOSED) this.retryLater();
      else this.on.state("reconnecting"); // the browser retries by itself, with Last-Event-ID
    });
  }

  deliver(es, name, e) {
    if (es !== this.es) return;
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      return; // not ours to understand; never let one bad message stop the stream
    }
    if (name === "snapshot") {
      this.on.snapshot(data);
      return;
    }
    if (e.lastEventId) this.lastId = e.lastEventId;
    this.on.event(name, data);
  }

  retryLater() {
    this.es?.close();
    this.on.state("offline");
    const delay = Math.min(30_000, 1000 * 2 ** this.failures) * (0.8 + Math.random() * 0.4);
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** The browser says the network is gone: stop waiting on a dead socket, and keep retrying slowly. */
  lost() {
    this.retryLater();
  }

  /** Connect again now, resuming after the last event (the page calls this when the network comes back). */
  reconnect() {
    this.es?.close();
    this.failures = 0;
    this.connect();
  }
}
