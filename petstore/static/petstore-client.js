// petstore-client.js: a small, dependency-free client for petstore's WebSocket rooms (SPEC §3).
//
//   import { PetstoreClient } from "/static/petstore-client.js";
//   const client = new PetstoreClient({ token });
//   client.on("state", ({ state }) => console.log(state));
//   client.subscribe("inventory", { onSnapshot: show, onResync: show, onEvent: (m) => show(m.data) });
//   client.connect("ws://127.0.0.1:8000/ws");
//
// What it does for you: authenticates with the `auth` message (browsers cannot send headers),
// accepts single messages and batches (JSON arrays), keeps the connection alive with pings at
// the server's `heartbeat`, reconnects with exponential backoff and full jitter, and
// resubscribes every room with `since` = the last offset/epoch it saw, so that missed events are
// replayed. When the server cannot prove a gap-free recovery (`recovered: false`), the room's
// `onResync(snapshot)` handler is called so the application can start over from the snapshot.
// A reconnect brings the `resume` pass of the welcome before (as `?resume=`): the server then
// charges it to the connection it resumes, not to the address's connect budget, so the storm of
// every dashboard behind one NAT address after a restart gets in at once.
//
// Connection states, emitted as "state" events, in the order a user would see them:
//   connecting    first connection attempt under way
//   connected     welcome received (first connection, or a reconnect with nothing to recover)
//   reconnecting  the connection dropped; waiting for the backoff delay, then trying again
//   recovered     reconnected, and every room replayed what it missed
//   resynced      reconnected, and at least one room restarted from its snapshot
//   closed        close() was called, or the server refused us (close code 1008)

/** Close codes of SPEC §3. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  POLICY: 1008, // refused Origin, bad or expired token: retrying the same way cannot help
  TOO_BIG: 1009,
  RESTARTING: 1012,
  TRY_AGAIN: 1013,
});

/** Our own close code (private range) for a connection that stopped answering pings. */
export const HEARTBEAT_TIMEOUT = 4000;

export const State = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  RECOVERED: "recovered",
  RESYNCED: "resynced",
  CLOSED: "closed",
});

const OPEN = 1; // WebSocket.OPEN, spelled out so that injected fakes need not define it

/**
 * Delay before reconnect attempt number `attempt` (0-based): "full jitter", a uniform draw in
 * [0, min(max, initial * factor^attempt)). Spreading retries over the whole window keeps a
 * restarted server from being hit by every dashboard at the same instant.
 */
export function backoffDelay(attempt, { initial = 500, max = 30000, factor = 2 } = {}, random = Math.random) {
  const ceiling = Math.min(max, initial * factor ** attempt);
  return Math.floor(random() * ceiling);
}

export class PetstoreClient {
  #url = null;
  /** The `resume` pass of the last welcome, for the next reconnect (spent by it). */
  #resume = null;
  #token;
  #WebSocket;
  #random;
  #setTimeout;
  #clearTimeout;
  #backoff;

  #ws = null;
  #state = State.IDLE;
  #listeners = new Map();
  #rooms = new Map(); // room -> { handlers, offset, epoch, active, pendingId }
  #nextId = 1;
  #attempt = 0;
  #everConnected = false;
  #reconnectTimer = null;
  #heartbeatTimer = null;
  #heartbeatMs = 0;
  #heardSinceLastPing = true;
  #resubscribing = null; // { ids: Set, resynced: boolean } while a reconnect's rooms are answering

  /**
   * @param {object} [options]
   * @param {string|null} [options.token] access token sent with the `auth` message
   * @param {typeof WebSocket} [options.WebSocket] constructor, injectable for tests
   * @param {() => number} [options.random] uniform [0, 1), injectable for deterministic tests
   * @param {Function} [options.setTimeout] timer functions, injectable for a fake clock
   * @param {Function} [options.clearTimeout]
   * @param {{initial?: number, max?: number, factor?: number}} [options.backoff] in milliseconds
   */
  constructor(options = {}) {
    this.#token = options.token ?? null;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#random = options.random ?? Math.random;
    this.#setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this.#clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this.#backoff = { initial: 500, max: 30000, factor: 2, ...options.backoff };
  }

  /** The current connection state (see the list at the top of this file). */
  get state() {
    return this.#state;
  }

  /** The user the server authenticated this connection as, from `welcome` or `authenticated` (null: anonymous). */
  user = null;

  /**
   * Listen to "state" ({state, code?, reason?}), "welcome", "auth" ({ok: true, user} or
   * {ok: false, message}: the answer to the token), "error" (an error message from the server),
   * "gap" ({room, expected, offset}) or "message" (every message, after handling).
   * Returns a function that removes the listener.
   */
  on(name, listener) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    this.#listeners.get(name).add(listener);
    return () => this.#listeners.get(name).delete(listener);
  }

  /** Open the connection (again, after close()). `url` is the ws:// or wss:// address of /ws. */
  connect(url) {
    if (url !== undefined && url !== this.#url) {
      this.#url = url;
      this.#resume = null; // a pass is for the server that issued it
    }
    if (!this.#url) throw new Error("PetstoreClient.connect needs the WebSocket URL of /ws");
    this.#cancelReconnect();
    const previous = this.#ws;
    this.#detach();
    if (previous) previous.close(CloseCode.NORMAL, "reconnecting on request");
    this.#attempt = 0;
    this.#everConnected = false;
    this.#setState(State.CONNECTING);
    this.#open();
  }

  /** Stop for good: no reconnect until connect() is called again. */
  close() {
    this.#cancelReconnect();
    const ws = this.#ws;
    this.#detach();
    if (ws) ws.close(CloseCode.NORMAL, "client closed");
    this.#setState(State.CLOSED);
  }

  /**
   * Use another access token. On a live connection it is sent at once with the `auth` message;
   * going back to anonymous (null) needs a new connection, so the client reconnects.
   */
  setToken(token) {
    const previous = this.#token;
    this.#token = token ?? null;
    if (!this.#isReady()) return; // sent with the welcome handshake instead
    if (this.#token) {
      this.#send({ type: "auth", token: this.#token });
    } else if (previous) {
      this.#ws.close(CloseCode.NORMAL, "signed out");
    }
  }

  /**
   * Join `room`. Handlers:
   *   onEvent(message)      each `event` message of the room, in offset order, never twice
   *   onSnapshot(snapshot)  the room's snapshot from the first `subscribed` (null for rooms without one)
   *   onResync(snapshot)    after a reconnect the server could not replay what was missed:
   *                         start over from this snapshot (defaults to onSnapshot)
   *   onError(message)      the server refused the subscription (e.g. `forbidden`)
   * Returns a function that leaves the room.
   */
  subscribe(room, handlers = {}) {
    const existing = this.#rooms.get(room);
    const entry = existing ?? { handlers, offset: null, epoch: null, active: false, pendingId: null, retries: 0 };
    entry.handlers = handlers;
    this.#rooms.set(room, entry);
    if (!existing && this.#isReady()) this.#sendSubscribe(room, entry);
    return () => this.unsubscribe(room);
  }

  /** Leave `room` and forget its position. */
  unsubscribe(room) {
    const entry = this.#rooms.get(room);
    if (!entry) return;
    this.#rooms.delete(room);
    if (this.#isReady() && (entry.active || entry.pendingId !== null)) {
      this.#send({ type: "unsubscribe", room, id: this.#nextId++ });
    }
  }

  /** Where the client stands in `room`: {offset, epoch}, or null before its first `subscribed`. */
  position(room) {
    const entry = this.#rooms.get(room);
    if (!entry || entry.epoch === null) return null;
    return { offset: entry.offset, epoch: entry.epoch };
  }

  // -- connection life cycle ---------------------------------------------------------------

  /** The URL to open: the configured one, with the resume pass when there is one (used once). */
  #openingUrl() {
    if (!this.#resume) return this.#url;
    const url = new URL(this.#url);
    url.searchParams.set("resume", this.#resume);
    this.#resume = null;
    return url.toString();
  }

  #open() {
    let ws;
    try {
      ws = new this.#WebSocket(this.#openingUrl());
    } catch (error) {
      // A malformed URL throws synchronously; retrying would throw again.
      this.#setState(State.CLOSED, { reason: String(error) });
      throw error;
    }
    this.#ws = ws;
    this.#welcomed = false;
    ws.onmessage = (message) => {
      if (ws === this.#ws) this.#receive(message.data);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.#lost(event.code, event.reason);
    };
    // Errors are always followed by a close event, which is where recovery happens.
    ws.onerror = () => {};
  }

  #welcomed = false;

  #lost(code, reason) {
    this.#detach();
    if (code === CloseCode.POLICY) {
      // The server refused our Origin or token; the application has to decide (sign in again).
      this.#setState(State.CLOSED, { code, reason });
      return;
    }
    this.#scheduleReconnect(code, reason);
  }

  #scheduleReconnect(code, reason) {
    const delay = backoffDelay(this.#attempt, this.#backoff, this.#random);
    this.#attempt += 1;
    this.#setState(State.RECONNECTING, { code, reason, delay });
    this.#reconnectTimer = this.#setTimeout(() => {
      this.#reconnectTimer = null;
      this.#open();
    }, delay);
  }

  #cancelReconnect() {
    if (this.#reconnectTimer !== null) this.#clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
  }

  /** Forget the current socket: its late callbacks are ignored and its per-connection state dropped. */
  #detach() {
    if (this.#ws) {
      this.#ws.onmessage = null;
      this.#ws.onclose = null;
    }
    this.#ws = null;
    this.#welcomed = false;
    this.#resubscribing = null;
    this.user = null;
    this.#stopHeartbeat();
    for (const entry of this.#rooms.values()) {
      entry.active = false;
      entry.pendingId = null;
    }
  }

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === OPEN;
  }

  #isReady() {
    return this.#isOpen() && this.#welcomed;
  }

  #send(message) {
    this.#ws.send(JSON.stringify(message));
  }

  // -- heartbeat ---------------------------------------------------------------------------

  #startHeartbeat(seconds) {
    this.#stopHeartbeat();
    if (!(seconds > 0)) return;
    this.#heartbeatMs = seconds * 1000;
    this.#heardSinceLastPing = true;
    this.#heartbeatTimer = this.#setTimeout(() => this.#beat(), this.#heartbeatMs);
  }

  #beat() {
    this.#heartbeatTimer = null;
    if (!this.#isOpen()) return;
    if (!this.#heardSinceLastPing) {
      // Nothing at all came back for a whole heartbeat after our ping: the connection is dead
      // even if the socket has not noticed (a half-open TCP connection). Start over.
      const ws = this.#ws;
      this.#detach();
      ws.close(CloseCode.NORMAL, "heartbeat timeout");
      this.#scheduleReconnect(HEARTBEAT_TIMEOUT, "heartbeat timeout");
      return;
    }
    this.#heardSinceLastPing = false;
    this.#send({ type: "ping", id: this.#nextId++ });
    this.#heartbeatTimer = this.#setTimeout(() => this.#beat(), this.#heartbeatMs);
  }

  #stopHeartbeat() {
    if (this.#heartbeatTimer !== null) this.#clearTimeout(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
  }

  // -- messages ----------------------------------------------------------------------------

  #receive(text) {
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch {
      this.#emit("error", { type: "error", code: "bad_frame", message: "the server sent a frame that is not JSON" });
      return;
    }
    this.#heardSinceLastPing = true;
    // A frame holds one message or a batch; messages of a batch are handled in order.
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (this.#ws === null) return; // a handler closed the client mid-batch
      this.#handle(message);
      this.#emit("message", message);
    }
  }

  #handle(message) {
    switch (message?.type) {
      case "welcome":
        return this.#onWelcome(message);
      case "subscribed":
        return this.#onSubscribed(message);
      case "event":
        return this.#onEvent(message);
      case "error":
        return this.#onError(message);
      case "authenticated":
        this.user = message.user ?? null;
        return this.#emit("auth", { ok: true, user: this.user });
      case "unsubscribed":
        return this.#onUnsubscribed(message);
      default:
        return undefined; // pong, and types added later: nothing to do
    }
  }

  #onWelcome(message) {
    this.user = message.user ?? null;
    this.#resume = typeof message.resume === "string" ? message.resume : null;
    if (this.#welcomed) {
      // Only the first welcome of a connection starts the handshake; answering a later one
      // with auth and subscriptions again could make a server that re-welcomes loop forever.
      this.#emit("welcome", message);
      return;
    }
    this.#welcomed = true;
    this.#startHeartbeat(message.heartbeat);
    this.#emit("welcome", message);
    // The auth message goes first: the server handles a connection's messages in order, so the
    // subscriptions that follow are authorized with it.
    if (this.#token) this.#send({ type: "auth", token: this.#token });
    const reconnect = this.#everConnected;
    this.#everConnected = true;
    const ids = new Set();
    for (const [room, entry] of this.#rooms) {
      const id = this.#sendSubscribe(room, entry);
      if (entry.epoch !== null) ids.add(id);
    }
    if (reconnect && ids.size > 0) {
      this.#resubscribing = { ids, resynced: false };
    } else {
      if (this.#rooms.size === 0) this.#attempt = 0;
      this.#setState(State.CONNECTED);
    }
  }

  #sendSubscribe(room, entry) {
    const id = this.#nextId++;
    entry.pendingId = id;
    const message = { type: "subscribe", room, id };
    if (entry.epoch !== null) message.since = { offset: entry.offset, epoch: entry.epoch };
    this.#send(message);
    return id;
  }

  #retrySubscribe(room, entry) {
    const delay = backoffDelay(entry.retries, this.#backoff, this.#random);
    entry.retries += 1;
    const ws = this.#ws;
    this.#setTimeout(() => {
      // Only on the same connection: a new one resubscribes every room in its handshake anyway.
      if (ws === this.#ws && this.#isReady() && this.#rooms.get(room) === entry && entry.pendingId === null) {
        this.#sendSubscribe(room, entry);
      }
    }, delay);
  }

  #onSubscribed(message) {
    const entry = this.#rooms.get(message.room);
    if (!entry || entry.pendingId !== message.id) return; // left the room meanwhile
    const first = entry.epoch === null;
    entry.pendingId = null;
    entry.active = true;
    entry.retries = 0;
    // The backoff starts over only once the server has served a subscription: a server that
    // accepts connections and drops them at once must not be retried at the shortest delay forever.
    this.#attempt = 0;
    if (first) {
      entry.epoch = message.epoch;
      entry.offset = message.offset;
      entry.handlers.onSnapshot?.(message.snapshot ?? null, message);
    } else if (message.recovered) {
      // The missed events follow this message; they move the offset forward themselves.
      // An epoch we already hold is the only one a recovery can answer with.
      entry.epoch = message.epoch;
    } else {
      entry.epoch = message.epoch;
      entry.offset = message.offset;
      const resync = entry.handlers.onResync ?? entry.handlers.onSnapshot;
      resync?.(message.snapshot ?? null, message);
    }
    this.#settle(message.id, !first && !message.recovered);
  }

  /** One answer of a reconnect's resubscriptions arrived; when all have, say how it went. */
  #settle(id, resynced) {
    const pending = this.#resubscribing;
    if (!pending || !pending.ids.delete(id)) return;
    pending.resynced ||= resynced;
    if (pending.ids.size > 0) return;
    this.#resubscribing = null;
    this.#setState(pending.resynced ? State.RESYNCED : State.RECOVERED);
  }

  #onEvent(message) {
    const entry = this.#rooms.get(message.room);
    if (!entry || entry.epoch === null) return;
    if (message.epoch === entry.epoch) {
      if (message.offset <= entry.offset) return; // already seen (e.g. replayed twice): never deliver twice
      if (message.offset !== entry.offset + 1) {
        this.#emit("gap", { room: message.room, expected: entry.offset + 1, offset: message.offset });
      }
    }
    entry.epoch = message.epoch;
    entry.offset = message.offset;
    entry.handlers.onEvent?.(message);
  }

  #onError(message) {
    const hasId = message.id !== undefined && message.id !== null;
    for (const [room, entry] of this.#rooms) {
      if (hasId && entry.pendingId === message.id) {
        entry.pendingId = null;
        if (message.code === "rate_limited") {
          // Not a refusal, only "not now": ask again later, slower each time.
          this.#retrySubscribe(room, entry);
        } else {
          // Refused (forbidden, unauthorized, ...): forget the room so we do not retry it on every reconnect.
          this.#rooms.delete(room);
          entry.handlers.onError?.(message);
        }
        this.#settle(message.id, false);
        break;
      }
    }
    // The auth message carries no id (SPEC §3), so an id-less `unauthorized` is its answer: the
    // token was refused and the connection goes on anonymously.
    if (!hasId && message.code === "unauthorized") this.#emit("auth", { ok: false, message: message.message });
    this.#emit("error", message);
  }

  #onUnsubscribed(message) {
    // With an id it answers our unsubscribe (the room is already forgotten). Without one, the
    // server ended the subscription itself (the new token may not see the room): forget it too.
    if (message.id !== undefined && message.id !== null) return;
    const entry = this.#rooms.get(message.room);
    if (!entry) return;
    this.#rooms.delete(message.room);
    entry.handlers.onError?.({ type: "error", id: null, code: "forbidden", message: "the server ended this subscription" });
  }

  // -- events to the application ------------------------------------------------------------

  #setState(state, detail = {}) {
    if (state === this.#state && state !== State.RECONNECTING) return;
    this.#state = state;
    this.#emit("state", { state, ...detail });
  }

  #emit(name, value) {
    for (const listener of [...(this.#listeners.get(name) ?? [])]) listener(value);
  }
}
