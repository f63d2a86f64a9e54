// The recovery, backoff and batching logic of petstore-client.js, driven by a fake socket and a
// fake clock (run: node --test tests/js/).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  backoffDelay,
  CloseCode,
  HEARTBEAT_TIMEOUT,
  PetstoreClient,
  State,
} from "../../petstore/static/petstore-client.js";
import { FakeClock, fakeWebSocketClass } from "./fakes.mjs";

const URL = "ws://127.0.0.1:8000/ws";

/** A client wired to fakes; `random` is fixed so every backoff delay is known in advance. */
function setup({ token = null, random = 0.5, backoff } = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const client = new PetstoreClient({
    token,
    WebSocket: FakeWebSocket,
    random: () => random,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    backoff,
  });
  const states = [];
  client.on("state", (s) => states.push(s.state));
  const last = () => sockets.at(-1);
  return { client, clock, sockets, states, last };
}

/** Records what a room's handlers were called with. */
function recorder() {
  const calls = { events: [], snapshots: [], resyncs: [], errors: [] };
  const handlers = {
    onEvent: (m) => calls.events.push(m),
    onSnapshot: (s) => calls.snapshots.push(s),
    onResync: (s) => calls.resyncs.push(s),
    onError: (e) => calls.errors.push(e),
  };
  return { calls, handlers };
}

const event = (room, offset, epoch = "e1", data = { n: offset }) => ({
  type: "event",
  room,
  offset,
  epoch,
  event: "inventory.changed",
  data,
  ts: "2026-01-01T00:00:00.000Z",
});

const subscribed = (sub, { offset, epoch = "e1", recovered = false, snapshot = null }) => ({
  type: "subscribed",
  id: sub.id,
  room: sub.room,
  offset,
  epoch,
  recovered,
  snapshot,
});

describe("backoffDelay", () => {
  test("draws uniformly below initial * factor^attempt (full jitter)", () => {
    assert.equal(backoffDelay(0, { initial: 500, max: 30000 }, () => 0.5), 250);
    assert.equal(backoffDelay(3, { initial: 500, max: 30000 }, () => 0.5), 2000);
    assert.equal(backoffDelay(3, { initial: 500, max: 30000 }, () => 0), 0);
    assert.equal(backoffDelay(3, { initial: 500, max: 30000 }, () => 0.999), 3996);
  });

  test("never exceeds the cap, however many attempts", () => {
    assert.equal(backoffDelay(10, { initial: 500, max: 30000 }, () => 0.5), 15000);
    assert.equal(backoffDelay(1000, { initial: 500, max: 30000 }, () => 0.999), 29970);
  });
});

describe("connecting", () => {
  test("goes connecting, then connected on welcome, and subscribes the rooms asked for before", () => {
    const { client, states, last } = setup();
    const inv = recorder();
    client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    assert.equal(last().url, URL);
    assert.deepEqual(states, [State.CONNECTING]);
    last().accept();
    assert.deepEqual(states, [State.CONNECTING, State.CONNECTED]);
    const [sub] = last().sentOfType("subscribe");
    assert.equal(sub.room, "inventory");
    assert.equal(sub.since, undefined, "a first subscription has nothing to recover");
    last().receive(subscribed(sub, { offset: 7, snapshot: { available: 1, pending: 2, sold: 3 } }));
    assert.deepEqual(inv.calls.snapshots, [{ available: 1, pending: 2, sold: 3 }]);
    assert.deepEqual(client.position("inventory"), { offset: 7, epoch: "e1" });
  });

  test("sends the auth message before any subscription, so they are authorized by it", () => {
    const { client, last } = setup({ token: "tok" });
    client.subscribe("orders", {});
    client.connect(URL);
    last().accept({ user: "alice" });
    assert.deepEqual(
      last().sent.map((m) => m.type),
      ["auth", "subscribe"],
    );
    assert.equal(last().sent[0].token, "tok");
    assert.equal(client.user, "alice");
  });

  test("subscribing on a live connection sends at once; a token set later is sent with auth", () => {
    const { client, last } = setup();
    client.connect(URL);
    last().accept();
    client.setToken("staff-token");
    client.subscribe("orders", {});
    assert.deepEqual(
      last().sent.map((m) => [m.type, m.token ?? m.room]),
      [
        ["auth", "staff-token"],
        ["subscribe", "orders"],
      ],
    );
  });

  test("a token set before the welcome goes out once, with the handshake", () => {
    const { client, last } = setup();
    client.connect(URL);
    last().open();
    client.setToken("early");
    last().receive({ type: "welcome", connection: "c", user: null, heartbeat: 25 });
    assert.deepEqual(
      last().sent.map((m) => [m.type, m.token]),
      [["auth", "early"]],
    );
  });

  test("a second welcome on the same connection updates the user without redoing the handshake", () => {
    const { client, last } = setup({ token: "tok" });
    client.subscribe("inventory", {});
    client.connect(URL);
    last().accept();
    last().receive({ type: "welcome", connection: "c", user: "alice", heartbeat: 25 });
    assert.equal(client.user, "alice");
    assert.deepEqual(
      last().sent.map((m) => m.type),
      ["auth", "subscribe"],
    );
  });

  test("reports the server's answer to the token: authenticated, or an id-less unauthorized error", () => {
    const { client, last } = setup({ token: "tok" });
    const answers = [];
    client.on("auth", (a) => answers.push(a));
    client.connect(URL);
    last().accept();
    last().receive({ type: "authenticated", id: null, user: "staff1" });
    assert.equal(client.user, "staff1");
    client.setToken("revoked");
    last().receive({ type: "error", id: null, code: "unauthorized", message: "token revoked" });
    assert.deepEqual(answers, [
      { ok: true, user: "staff1" },
      { ok: false, message: "token revoked" },
    ]);
  });

  test("a subscription the server ends by itself (id-less unsubscribed) is forgotten", () => {
    const { client, clock, last } = setup({ token: "tok" });
    const orders = recorder();
    client.subscribe("orders", orders.handlers);
    client.connect(URL);
    last().accept();
    const [sub] = last().sentOfType("subscribe");
    last().receive(subscribed(sub, { offset: 0 }));
    last().receive({ type: "unsubscribed", id: null, room: "orders" });
    assert.equal(orders.calls.errors[0].code, "forbidden");
    assert.equal(client.position("orders"), null);
    last().serverClose(CloseCode.RESTARTING);
    clock.advance(10_000);
    last().accept();
    assert.deepEqual(last().sentOfType("subscribe"), []);
  });

  test("a rate-limited subscription is asked again after a backoff delay, not dropped", () => {
    const { client, clock, last } = setup();
    const inv = recorder();
    client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    last().accept();
    const [first] = last().sentOfType("subscribe");
    last().receive({ type: "error", id: first.id, code: "rate_limited", message: "slow down" });
    assert.deepEqual(inv.calls.errors, []);
    clock.advance(249);
    assert.equal(last().sentOfType("subscribe").length, 1);
    clock.advance(1);
    const [, again] = last().sentOfType("subscribe");
    assert.equal(again.room, "inventory");
    last().receive(subscribed(again, { offset: 3, snapshot: { available: 3, pending: 0, sold: 0 } }));
    assert.deepEqual(inv.calls.snapshots, [{ available: 3, pending: 0, sold: 0 }]);
  });

  test("a refused subscription calls onError and is not retried on reconnect", () => {
    const { client, clock, last } = setup();
    const orders = recorder();
    client.subscribe("orders", orders.handlers);
    client.connect(URL);
    last().accept();
    const [sub] = last().sentOfType("subscribe");
    last().receive({ type: "error", id: sub.id, code: "forbidden", message: "staff only" });
    assert.equal(orders.calls.errors[0].code, "forbidden");
    last().serverClose(CloseCode.RESTARTING);
    clock.advance(10_000);
    last().accept();
    assert.deepEqual(last().sentOfType("subscribe"), []);
  });
});

describe("messages", () => {
  test("a batch (JSON array) is handled message by message, in order", () => {
    const { client, last } = setup();
    const inv = recorder();
    client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    last().accept();
    const [sub] = last().sentOfType("subscribe");
    last().receive([subscribed(sub, { offset: 0 }), event("inventory", 1), event("inventory", 2)]);
    last().receive(event("inventory", 3));
    assert.deepEqual(
      inv.calls.events.map((m) => m.offset),
      [1, 2, 3],
    );
  });

  test("an event already seen is never delivered twice, and a hole in offsets is reported", () => {
    const { client, last } = setup();
    const inv = recorder();
    const gaps = [];
    client.on("gap", (g) => gaps.push(g));
    client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    last().accept();
    const [sub] = last().sentOfType("subscribe");
    last().receive([subscribed(sub, { offset: 5 }), event("inventory", 5), event("inventory", 6)]);
    last().receive([event("inventory", 6), event("inventory", 8)]);
    assert.deepEqual(
      inv.calls.events.map((m) => m.offset),
      [6, 8],
    );
    assert.deepEqual(gaps, [{ room: "inventory", expected: 7, offset: 8 }]);
  });

  test("a frame that is not JSON is reported as an error and the connection goes on", () => {
    const { client, last } = setup();
    const errors = [];
    client.on("error", (e) => errors.push(e.code));
    const inv = recorder();
    client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    last().accept();
    last().receive("not json{");
    const [sub] = last().sentOfType("subscribe");
    last().receive([subscribed(sub, { offset: 0 }), event("inventory", 1)]);
    assert.deepEqual(errors, ["bad_frame"]);
    assert.equal(inv.calls.events.length, 1);
  });

  test("after unsubscribe, the room's late events are ignored", () => {
    const { client, last } = setup();
    const inv = recorder();
    const leave = client.subscribe("inventory", inv.handlers);
    client.connect(URL);
    last().accept();
    const [sub] = last().sentOfType("subscribe");
    last().receive(subscribed(sub, { offset: 0 }));
    leave();
    assert.deepEqual(last().sentOfType("unsubscribe")[0].room, "inventory");
    last().receive(event("inventory", 1));
    assert.deepEqual(inv.calls.events, []);
    assert.equal(client.position("inventory"), null);
  });
});

describe("reconnect and recovery", () => {
  /** A connected client in room `inventory` that has seen events up to offset 4 of epoch e1. */
  function connectedAt4() {
    const env = setup();
    const inv = recorder();
    env.client.subscribe("inventory", inv.handlers);
    env.client.subscribe("pets", {});
    env.client.connect(URL);
    env.last().accept();
    const [subInv, subPets] = env.last().sentOfType("subscribe");
    env.last().receive([
      subscribed(subInv, { offset: 2, snapshot: { available: 0, pending: 0, sold: 0 } }),
      subscribed(subPets, { offset: 10, epoch: "p1" }),
      event("inventory", 3),
      event("inventory", 4),
    ]);
    return { ...env, inv };
  }

  test("resubscribes with since = last offset/epoch per room and replays the missed events", () => {
    const { clock, states, last, sockets, inv } = connectedAt4();
    last().serverClose(CloseCode.RESTARTING, "server restarting");
    assert.equal(states.at(-1), State.RECONNECTING);
    assert.deepEqual(clock.pending(), [250], "first retry: random 0.5 of the 500 ms initial window");
    clock.advance(249);
    assert.equal(sockets.length, 1, "no retry before the backoff delay");
    clock.advance(1);
    assert.equal(sockets.length, 2);
    last().accept();
    const subs = last().sentOfType("subscribe");
    assert.deepEqual(
      subs.map((s) => [s.room, s.since]),
      [
        ["inventory", { offset: 4, epoch: "e1" }],
        ["pets", { offset: 10, epoch: "p1" }],
      ],
    );
    assert.equal(states.at(-1), State.RECONNECTING, "not recovered before every room answered");
    last().receive([
      subscribed(subs[0], { offset: 6, recovered: true }),
      event("inventory", 4), // the server replaying one too many must not produce a duplicate
      event("inventory", 5),
      event("inventory", 6),
    ]);
    assert.equal(states.at(-1), State.RECONNECTING);
    last().receive(subscribed(subs[1], { offset: 10, epoch: "p1", recovered: true }));
    assert.equal(states.at(-1), State.RECOVERED);
    assert.deepEqual(
      inv.calls.events.map((m) => m.offset),
      [3, 4, 5, 6],
    );
    assert.deepEqual(inv.calls.resyncs, []);
  });

  test("recovered: false calls onResync with the snapshot and reports resynced", () => {
    const { clock, states, last, inv } = connectedAt4();
    last().serverClose(1006);
    clock.advance(250);
    last().accept();
    const subs = last().sentOfType("subscribe");
    last().receive([
      subscribed(subs[0], { offset: 1, epoch: "e2", snapshot: { available: 9, pending: 0, sold: 1 } }),
      subscribed(subs[1], { offset: 10, epoch: "p1", recovered: true }),
      event("inventory", 2, "e2"),
    ]);
    assert.equal(states.at(-1), State.RESYNCED);
    assert.deepEqual(inv.calls.resyncs, [{ available: 9, pending: 0, sold: 1 }]);
    assert.deepEqual(
      inv.calls.events.map((m) => [m.epoch, m.offset]),
      [
        ["e1", 3],
        ["e1", 4],
        ["e2", 2],
      ],
    );
  });

  test("onResync defaults to onSnapshot", () => {
    const { client, clock, last } = setup();
    const snapshots = [];
    client.subscribe("inventory", { onSnapshot: (s) => snapshots.push(s) });
    client.connect(URL);
    last().accept();
    last().receive(subscribed(last().sentOfType("subscribe")[0], { offset: 0, snapshot: { a: 1 } }));
    last().serverClose(CloseCode.RESTARTING);
    clock.advance(250);
    last().accept();
    last().receive(subscribed(last().sentOfType("subscribe")[0], { offset: 0, epoch: "e2", snapshot: { a: 2 } }));
    assert.deepEqual(snapshots, [{ a: 1 }, { a: 2 }]);
  });

  test("backoff doubles with each failed attempt, is capped, and resets after a recovery", () => {
    const { client, clock, last, states } = setup({ backoff: { initial: 100, max: 1000 } });
    client.subscribe("inventory", {});
    client.connect(URL);
    last().accept();
    last().receive(subscribed(last().sentOfType("subscribe")[0], { offset: 0 }));
    const delays = [];
    client.on("state", (s) => {
      if (s.state === State.RECONNECTING && s.delay !== undefined) delays.push(s.delay);
    });
    last().serverClose(1006);
    for (let i = 0; i < 6; i++) {
      clock.advance(delays.at(-1));
      last().serverClose(1006); // connection refused: closes before any welcome
    }
    assert.deepEqual(delays, [50, 100, 200, 400, 500, 500, 500]);
    clock.advance(delays.at(-1));
    last().accept();
    last().receive(subscribed(last().sentOfType("subscribe")[0], { offset: 0, recovered: true }));
    assert.equal(states.at(-1), State.RECOVERED);
    last().serverClose(CloseCode.TRY_AGAIN);
    assert.equal(delays.at(-1), 50, "a recovered connection starts the backoff over");
  });

  test("a server that welcomes and drops at once does not reset the backoff", () => {
    const { client, clock, last } = setup({ backoff: { initial: 100, max: 1000 } });
    const delays = [];
    client.on("state", (s) => {
      if (s.state === State.RECONNECTING) delays.push(s.delay);
    });
    client.subscribe("inventory", {});
    client.connect(URL);
    for (let i = 0; i < 4; i++) {
      last().accept();
      last().serverClose(1011); // closed before answering the subscription
      clock.advance(delays.at(-1));
    }
    assert.deepEqual(delays, [50, 100, 200, 400]);
  });

  test("close code 1008 (bad token or Origin) stops: no retry with the same credentials", () => {
    const s = setup({ token: "expired" });
    const closes = [];
    s.client.on("state", (d) => closes.push(d));
    s.client.connect(URL);
    s.last().accept();
    s.last().serverClose(CloseCode.POLICY, "token expired");
    assert.equal(s.client.state, State.CLOSED);
    assert.deepEqual(closes.at(-1), { state: State.CLOSED, code: 1008, reason: "token expired" });
    assert.deepEqual(s.clock.pending(), []);
    s.clock.advance(60_000);
    assert.equal(s.sockets.length, 1);
  });

  test("close() stops for good, and connect() starts again, resubscribing with since", () => {
    const { client, clock, last, sockets } = connectedAt4();
    client.close();
    assert.equal(client.state, State.CLOSED);
    assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: "client closed" });
    clock.advance(60_000);
    assert.equal(sockets.length, 1);
    client.connect();
    last().accept();
    assert.deepEqual(last().sentOfType("subscribe")[0].since, { offset: 4, epoch: "e1" });
  });

  test("a replaced socket's late messages and close are ignored", () => {
    const { clock, last, sockets, inv } = connectedAt4();
    const old = last();
    old.serverClose(CloseCode.RESTARTING);
    clock.advance(250);
    last().accept();
    old.onmessage?.({ data: JSON.stringify(event("inventory", 5)) });
    old.onclose?.({ code: 1006 });
    assert.equal(sockets.length, 2);
    assert.deepEqual(
      inv.calls.events.map((m) => m.offset),
      [3, 4],
    );
  });

  test("signing out (token back to null) reconnects anonymously and recovers the rooms", () => {
    const { client, clock, last, sockets } = setup({ token: "tok" });
    client.subscribe("inventory", {});
    client.connect(URL);
    last().accept({ user: "alice" });
    last().receive(subscribed(last().sentOfType("subscribe")[0], { offset: 3 }));
    client.setToken(null);
    assert.equal(sockets[0].closedWith.code, 1000);
    clock.advance(250);
    last().accept();
    assert.deepEqual(
      last().sent.map((m) => m.type),
      ["subscribe"],
    );
    assert.deepEqual(last().sent[0].since, { offset: 3, epoch: "e1" });
  });
});

describe("heartbeat", () => {
  test("pings every `heartbeat` seconds while the server answers", () => {
    const { client, clock, last } = setup();
    client.connect(URL);
    last().accept({ heartbeat: 10 });
    clock.advance(9_999);
    assert.deepEqual(last().sentOfType("ping"), []);
    clock.advance(1);
    const [ping] = last().sentOfType("ping");
    last().receive({ type: "pong", id: ping.id });
    clock.advance(10_000);
    assert.equal(last().sentOfType("ping").length, 2);
    assert.equal(client.state, State.CONNECTED);
  });

  test("a connection silent for a whole heartbeat after a ping is dropped and retried", () => {
    const { client, clock, last, sockets, states } = setup();
    client.connect(URL);
    last().accept({ heartbeat: 10 });
    clock.advance(10_000); // ping
    clock.advance(10_000); // no pong, no message: dead
    assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: "heartbeat timeout" });
    assert.equal(states.at(-1), State.RECONNECTING);
    clock.advance(250);
    assert.equal(sockets.length, 2);
    assert.equal(HEARTBEAT_TIMEOUT, 4000);
  });

  test("any message counts as a sign of life, not only pong", () => {
    const { client, clock, last, sockets } = setup();
    client.connect(URL);
    last().accept({ heartbeat: 10 });
    clock.advance(10_000);
    last().receive({ type: "unsubscribed", id: 99, room: "x" });
    clock.advance(10_000);
    assert.equal(sockets.length, 1);
    assert.equal(sockets[0].closedWith, null);
  });
});

describe("resume pass", () => {
  const welcome = (resume) => ({ type: "welcome", connection: "c", user: null, heartbeat: 25, resume });

  test("a reconnect brings the pass of the last welcome, once", () => {
    const { client, clock, sockets, last } = setup();
    client.connect(URL);
    assert.equal(last().url, URL, "nothing to resume on the first connection");
    last().open();
    last().receive(welcome("1700000000.abcdefghijkl.0123456789abcdefghijkl"));
    last().serverClose(CloseCode.RESTARTING, "server restarting");
    clock.advance(clock.pending()[0]);
    assert.equal(sockets.length, 2);
    assert.equal(last().url, `${URL}?resume=1700000000.abcdefghijkl.0123456789abcdefghijkl`);
    last().serverClose(1006); // refused before any welcome: the pass was spent, or tried
    clock.advance(clock.pending()[0]);
    assert.equal(sockets.length, 3);
    assert.equal(last().url, URL, "a pass is good for one reconnect");
  });

  test("a welcome without a pass leaves none, and another server's URL drops it", () => {
    const { client, clock, last } = setup();
    client.connect(URL);
    last().open();
    last().receive(welcome("1700000000.abcdefghijkl.0123456789abcdefghijkl"));
    client.connect("ws://127.0.0.1:9000/ws");
    assert.equal(last().url, "ws://127.0.0.1:9000/ws");
    last().open();
    last().receive(welcome(undefined));
    last().serverClose(CloseCode.RESTARTING, "server restarting");
    clock.advance(clock.pending()[0]);
    assert.equal(last().url, "ws://127.0.0.1:9000/ws");
  });
});
