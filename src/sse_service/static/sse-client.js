/**
 * sse-client.js: a browser client for sse-service task streams.
 *
 * A dependency-free ES module to copy into a frontend.  It wraps `EventSource`
 * and adds what a bare one lacks: a callback per task event, a connection
 * status, token refresh, backoff while the server is unreachable, resume
 * across page reloads (sessionStorage), duplicate suppression, and acting on
 * the reason the server gives when it ends a stream (its `close` event).
 * docs/browser.md explains each behaviour.
 *
 * @example
 * import { TaskStream } from "./sse-client.js";
 *
 * const stream = new TaskStream({
 *   url: "https://events.example.com/events",
 *   getToken: () => auth.accessToken(),          // a string, or a promise of one
 *   storageKey: `tasks:lastEventId:${userId}`,   // one key per user
 *   on: {
 *     "task.created": (task) => store.upsert(task),
 *     "task.updated": (task) => store.upsert(task),
 *     "task.completed": (task) => store.upsert(task),
 *     "task.deleted": (task) => store.remove(task.id),
 *   },
 *   onEvent: (message, id) => console.debug("task event", id, message),
 *   onResync: (reason) => store.refetchAll(),    // events may be missing: reload state
 *   onStatus: (status) => { badge.dataset.status = status; },
 * });
 * stream.close();                                // on logout
 *
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} Status
 * @typedef {object} TaskStreamOptions
 * @property {string} [url="/events"] Stream endpoint, absolute or relative to the page.
 * @property {() => (string | null | undefined | Promise<string | null | undefined>)} [getToken]
 *   Called before each connection this client opens (not before the browser's own retries).
 *   A string goes in `?token=`; null/undefined sends none (cookie auth).  A throw or a
 *   rejection is retried with backoff.
 * @property {boolean} [withCredentials=false] Send cookies cross-origin (cookie auth).
 * @property {string | null} [storageKey="sse:lastEventId"] sessionStorage key for the last
 *   event id; null: no resume across reloads.
 * @property {Record<string, (task: object, message: object, id: string) => void>} [on]
 *   By event name: task.created, task.updated, task.deleted, task.completed.
 * @property {(message: object, id: string) => void} [onEvent] Every task event.
 * @property {(id: string) => void} [onReady] A new stream's starting position (its `ready` frame).
 * @property {(reason: string, id: string) => void} [onResync] Events may be missing:
 *   refetch the state this stream keeps up to date.
 * @property {(status: Status, detail?: string) => void} [onStatus] Every status change.
 *   After a server `close` event the detail is its reason (`token_expired`,
 *   `server_shutdown`, `slow_consumer`, `revoked`).
 * @property {number} [shutdownDelayMs=2000] After `server_shutdown`, reconnect within
 *   this many milliseconds (a random point in it), so the tabs of a draining replica
 *   do not all arrive at the next one together.
 * @property {number} [backoffMs=1000] First backoff ceiling; doubles up to maxBackoffMs.
 * @property {number} [maxBackoffMs=30000]
 * @property {number} [maxErrors=3] Failed browser retries in a row before backing off.
 * @property {number} [dedupeSize=1000] How many recent event ids are remembered.
 */

const DEFAULTS = { url: "/events", withCredentials: false, storageKey: "sse:lastEventId",
  backoffMs: 1000, maxBackoffMs: 30000, maxErrors: 3, dedupeSize: 1000, shutdownDelayMs: 2000 };

export class TaskStream {
  #o;
  #es = null;
  #probe = null;
  #timer = 0;
  #status = "";
  #lastId = "";
  #seen = new Set();
  #generation = 0; // bumped by every teardown, so stale async steps can tell
  #errors = 0; // errors since the last open
  #attempt = 0; // backoff exponent
  #openedOnce = false;
  #openedSinceToken = false;
  #online = () => { if (this.#timer) this.#connect(); };

  /** @param {TaskStreamOptions} options */
  constructor(options = {}) {
    this.#o = { ...DEFAULTS, ...options };
    try {
      this.#lastId = (this.#o.storageKey && sessionStorage.getItem(this.#o.storageKey)) || "";
    } catch { /* storage disabled: resume within this page only */ }
    globalThis.addEventListener?.("online", this.#online);
    this.#connect();
  }

  /** @returns {Status} */
  get status() { return this.#status; }

  /** The id of the last event handled: where the next connection resumes. */
  get lastEventId() { return this.#lastId; }

  /** Stop for good: no more connections, status `closed`. */
  close(detail = "closed by the app") {
    this.#teardown();
    globalThis.removeEventListener?.("online", this.#online);
    this.#setStatus("closed", detail);
  }

  async #connect() {
    this.#teardown();
    const generation = this.#generation;
    this.#setStatus(this.#openedOnce ? "reconnecting" : "connecting");
    let token;
    try {
      token = await this.#o.getToken?.();
    } catch {
      if (generation === this.#generation) this.#backoff();
      return;
    }
    if (generation !== this.#generation) return;
    // A stream that dropped before even its `ready` frame arrived left no
    // position: a new stream without an id starts "from now", so events may be
    // missing.  Said once it is open, so that a refetch then leaves no gap.
    const blind = this.#openedOnce && !this.#lastId;
    const url = new URL(this.#o.url, globalThis.location?.href);
    if (token) url.searchParams.set("token", token);
    if (this.#lastId) url.searchParams.set("lastEventId", this.#lastId);
    const es = (this.#es = new EventSource(url, { withCredentials: this.#o.withCredentials }));
    this.#openedSinceToken = false;
    es.onopen = () => {
      this.#errors = this.#attempt = 0;
      this.#openedOnce = this.#openedSinceToken = true;
      this.#setStatus("open");
      if (blind) this.#o.onResync?.("position_unknown", "");
    };
    es.onmessage = (event) => this.#message(event);
    es.addEventListener("resync", (event) => this.#resync(event));
    // A new stream's position, before any event: a later reconnect of ours
    // (token refresh, backoff) resumes from here instead of "from now".
    es.addEventListener("ready", (event) => {
      this.#store(event.lastEventId);
      this.#o.onReady?.(event.lastEventId);
    });
    // The server names why it ends a stream; acting on it beats the browser's
    // blind retry (which, after token expiry, would only meet a 401).
    es.addEventListener("close", (event) => { if (es === this.#es) this.#closed(event); });
    es.onerror = () => { if (es === this.#es) this.#error(es, url); };
  }

  #closed(event) {
    let reason = "unknown";
    try {
      reason = JSON.parse(event.data).reason ?? reason;
    } catch { /* treated like a shutdown below */ }
    // This stream is over: stop the browser's own retry before it starts.
    this.#teardown();
    if (reason === "revoked") {
      this.close(reason);
      return;
    }
    this.#setStatus("reconnecting", reason);
    if (reason === "token_expired" || reason === "slow_consumer") {
      // A fresh token (getToken), resuming from the last id at once.
      this.#connect();
    } else {
      // server_shutdown, or a reason this client does not know yet.
      const delay = Math.random() * this.#o.shutdownDelayMs;
      this.#timer = setTimeout(() => this.#connect(), delay);
    }
  }

  #error(es, url) {
    if (es.readyState === EventSource.CONNECTING) {
      // The browser retries by itself, sending Last-Event-ID: the normal case.
      this.#setStatus(this.#openedOnce ? "reconnecting" : "connecting");
      if (++this.#errors >= this.#o.maxErrors) this.#backoff();
    } else if (this.#openedSinceToken) {
      // CLOSED after a working stream: most likely the browser's retry met a
      // 401 because the token expired.  A new token, resuming from the last id.
      this.#connect();
    } else {
      this.#diagnose(url);
    }
  }

  // EventSource hides the status code; one fetch tells a refused token (401/403,
  // with a token just handed out: retrying cannot help) from a busy or absent
  // server (429, 5xx, network error, CORS refusal), which is retried with backoff.
  async #diagnose(url) {
    this.#teardown();
    const generation = this.#generation;
    const probe = (this.#probe = new AbortController());
    const credentials = this.#o.withCredentials ? "include" : "same-origin";
    let status = 0;
    try {
      status = (await fetch(url, { credentials, cache: "no-store", signal: probe.signal })).status;
    } catch { /* network error or CORS refusal: status stays 0 */ }
    probe.abort(); // a 200 is a live stream nobody reads
    if (generation !== this.#generation) return;
    if (status === 401 || status === 403) this.close(`authentication failed (${status})`);
    else this.#backoff();
  }

  #backoff() {
    this.#teardown();
    this.#setStatus(this.#openedOnce ? "reconnecting" : "connecting");
    const ceiling = Math.min(this.#o.maxBackoffMs, this.#o.backoffMs * 2 ** this.#attempt++);
    // Never sooner than half the ceiling: tabs that lost the same server come
    // back spread out instead of all at once.
    this.#timer = setTimeout(() => this.#connect(), ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  #message(event) {
    const id = event.lastEventId;
    // The server never repeats an id on one stream; this guards the seams
    // between streams (a replay after a reconnect).
    if (id && this.#seen.has(id)) return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (id) {
      this.#seen.add(id);
      if (this.#seen.size > this.#o.dedupeSize) this.#seen.delete(this.#seen.values().next().value);
      this.#store(id);
    }
    this.#o.on?.[message.event]?.(message.task, message, id);
    this.#o.onEvent?.(message, id);
  }

  #resync(event) {
    let reason = "unknown";
    try {
      reason = JSON.parse(event.data).reason ?? reason;
    } catch { /* "unknown": the app refetches either way */ }
    this.#store(event.lastEventId);
    this.#o.onResync?.(reason, event.lastEventId);
  }

  #store(id) {
    if (!id) return;
    this.#lastId = id;
    try {
      if (this.#o.storageKey) sessionStorage.setItem(this.#o.storageKey, id);
    } catch { /* storage disabled or full: resume within this page only */ }
  }

  #teardown() {
    this.#generation += 1;
    clearTimeout(this.#timer);
    this.#timer = 0;
    this.#probe?.abort();
    this.#probe = null;
    this.#es?.close();
    this.#es = null;
  }

  #setStatus(status, detail) {
    if (status === this.#status) return;
    this.#status = status;
    this.#o.onStatus?.(status, detail);
  }
}
