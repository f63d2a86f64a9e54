// Test doubles for petstore-client.js: a WebSocket the test drives by hand and a clock that only
// moves when told to, so reconnect and heartbeat timing are exact and nothing sleeps.

export class FakeClock {
  now = 0;
  #timers = new Map();
  #nextId = 1;

  setTimeout = (fn, ms = 0) => {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.now + ms, fn, ms });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Delays (ms, as requested) of the timers still waiting. */
  pending() {
    return [...this.#timers.values()].map((t) => t.ms);
  }

  /** Move time forward, running every timer that falls due, earliest first. */
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, timer] of this.#timers) {
        if (timer.at <= until && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.#timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = until;
  }
}

/** Builds a WebSocket class whose instances land in `sockets`, newest last. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;

    readyState = 0;
    sent = [];
    closedWith = null;
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;

    constructor(url) {
      this.url = url;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error(`send on a socket in state ${this.readyState}`);
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.closedWith = { code, reason };
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: true });
    }

    // -- driven by the test, playing the server --

    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** Deliver one frame: a message object, or an array of them (a batch). */
    receive(frame) {
      this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    /** Open and send `welcome`, as the server does on connect. */
    accept({ user = null, heartbeat = 25 } = {}) {
      this.open();
      this.receive({ type: "welcome", connection: `c${sockets.indexOf(this)}`, user, heartbeat });
    }

    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }

    sentOfType(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWebSocket, sockets };
}
