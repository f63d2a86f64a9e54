// The pets panel's rules that need no page: which pets match a filter (as the server's search
// decides), and the RoomBudget that joins and leaves `pet:{id}` rooms within the server's
// per-connection message limit (run: node --test tests/js/).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { BUDGET, BUDGET_WINDOW_MS, RoomBudget, compareKeys, matches } from "../../petstore/static/pet-search.js";
import { FakeClock } from "./fakes.mjs";

const REX = { id: 7, name: "Rex the Brave", status: "sold", category: { name: "Dogs" }, tags: [{ name: "old" }] };

describe("matches", () => {
  test("every filter is optional; q is any part of the name in any case", () => {
    assert.ok(matches(REX, { q: "", status: "", tag: "", category: "" }));
    assert.ok(matches(REX, { q: "THE br" }));
    assert.ok(!matches(REX, { q: "rexy" }));
  });

  test("status, tag and category must each hold", () => {
    assert.ok(matches(REX, { status: "sold", tag: "old", category: "Dogs" }));
    assert.ok(!matches(REX, { status: "available" }));
    assert.ok(!matches(REX, { tag: "young" }));
    assert.ok(!matches(REX, { category: "Cats" }));
    assert.ok(!matches({ id: 8, name: "Nameless" }, { category: "Dogs" }));
  });
});

describe("compareKeys", () => {
  test("names go in code point order, as the server's search has them on both databases", () => {
    // The order of tests/api/test_search.py's NAMES_IN_ORDERS there: not a language's (apple,
    // Apple, b, ...), nor UTF-16's (the emoji before U+FFEE).
    const names = ["apple", "Zebra", "éclair", "Éclair", "b", "_x", "\u{1F600} smile", "\uFFEE half", "Apple"];
    const sorted = names.map((name, id) => [name, id]).sort(compareKeys);
    assert.deepEqual(
      sorted.map(([name]) => name),
      ["Apple", "Zebra", "_x", "apple", "b", "Éclair", "éclair", "\uFFEE half", "\u{1F600} smile"],
    );
  });

  test("one name: by id, as a number", () => {
    assert.equal(compareKeys(["twin", 9], ["twin", 10]), -1);
    assert.equal(compareKeys([10], [9]), 1);
    assert.equal(compareKeys(["twin", 3], ["twin", 3]), 0);
    assert.equal(compareKeys(["twi", 99], ["twin", 1]), -1); // a prefix first
  });
});

/** A client that records what it is asked to join and leave. */
function fakeClient() {
  const calls = [];
  const listeners = [];
  return {
    calls,
    subscribe: (room) => calls.push(["subscribe", room]),
    unsubscribe: (room) => calls.push(["unsubscribe", room]),
    on: (name, listener) => name === "welcome" && listeners.push(listener),
    welcome: () => listeners.forEach((listener) => listener()),
  };
}

/** The budget's clock: the fake one's time and timers. */
const time = (clock) => ({ now: () => clock.now, setTimeout: clock.setTimeout });

const rooms = (from, count) => Array.from({ length: count }, (_, i) => `pet:${from + i}`);

describe("RoomBudget", () => {
  test("joins what is wanted and leaves what is not, leaving first", () => {
    const clock = new FakeClock();
    const client = fakeClient();
    const budget = new RoomBudget(client, () => ({}), undefined, time(clock));
    budget.want(["pet:1", "pet:2"]);
    budget.want(["pet:2", "pet:3"]);
    assert.deepEqual(client.calls, [
      ["subscribe", "pet:1"],
      ["subscribe", "pet:2"],
      ["unsubscribe", "pet:1"],
      ["subscribe", "pet:3"],
    ]);
    assert.deepEqual(budget.joined, new Set(["pet:2", "pet:3"]));
  });

  test("never sends more than BUDGET messages in a window; the rest follow in the next", () => {
    const clock = new FakeClock();
    const client = fakeClient();
    const left = [];
    const budget = new RoomBudget(client, () => ({}), (room) => left.push(room), time(clock));
    budget.want(rooms(1, 20));
    budget.want(rooms(101, 20)); // a page turn: 20 to leave, 20 to join
    assert.equal(client.calls.length, BUDGET);
    assert.deepEqual(client.calls.slice(20, BUDGET), rooms(1, 10).map((room) => ["unsubscribe", room]));
    clock.advance(BUDGET_WINDOW_MS + 20);
    assert.equal(client.calls.length, 60);
    assert.deepEqual(budget.joined, new Set(rooms(101, 20)));
    assert.deepEqual(left, rooms(1, 20));
    // Everything wanted is done: no timer waits.
    assert.deepEqual(clock.pending(), []);
  });

  test("a reconnect's resubscriptions spend the window too", () => {
    const clock = new FakeClock();
    const client = fakeClient();
    const budget = new RoomBudget(client, () => ({}), undefined, time(clock));
    budget.want(rooms(1, 20));
    clock.advance(BUDGET_WINDOW_MS + 1);
    client.welcome(); // 20 rooms and the others resubscribed at once
    budget.want(rooms(101, 20));
    assert.equal(client.calls.length, 20 + (BUDGET - 24));
  });
});
