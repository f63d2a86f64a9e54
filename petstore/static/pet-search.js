// The pets panel: a search over GET /api/v3/pet/search, a page at a time, whose rows stay live.
//
// Live rows without subscribing to every pet: the page joins the `pet:{id}` room of each row
// it shows (and leaves it when the row goes), and the `pets` room, which says when a pet is
// created or changed (shown when it matches the filter and falls in this page) or deleted (its
// row is marked). Joining and leaving cost WebSocket messages, which the server limits per connection
// (PETSTORE_RATELIMIT_WS_MESSAGES, 50 per 10 s by default), so they go through a RoomBudget:
// a fast reader paging through never gets the connection closed for chattiness. Until a row's
// room is joined, the `pets` room's `pet.updated` keeps it current.
import { $, element, flash, problem } from "./dom.js";

export const PAGE_SIZE = 20;
const TYPING_PAUSE_MS = 400;
/** Subscribe and unsubscribe messages per BUDGET_WINDOW_MS: well under the server's 50 per 10 s. */
export const BUDGET = 30;
export const BUDGET_WINDOW_MS = 10_000;

/**
 * The `pet:{id}` rooms the page wants (those of the shown rows), joined and left at most BUDGET
 * messages per window; what the window cannot take waits for the next one.
 */
export class RoomBudget {
  #client;
  #handlers;
  #wanted = new Set();
  #joined = new Set();
  #sent = []; // times of the messages in the current window
  #timer = null;

  #onLeave;
  #now;
  #setTimeout;

  /**
   * `handlers(room)`: the subscription handlers of a room joined; `onLeave(room)` when one is left.
   * `clock` ({now, setTimeout}) is injectable for tests.
   */
  constructor(client, handlers, onLeave = () => undefined, clock = {}) {
    this.#client = client;
    this.#handlers = handlers;
    this.#onLeave = onLeave;
    this.#now = clock.now ?? (() => Date.now());
    this.#setTimeout = clock.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    // A reconnect resubscribes every joined room at once: that spends the window too.
    client.on("welcome", () => this.#spend(this.#joined.size + 4));
  }

  /** The rooms the page wants now, e.g. ["pet:12", "pet:15"]. */
  want(rooms) {
    this.#wanted = new Set(rooms);
    this.#reconcile();
  }

  get joined() {
    return new Set(this.#joined);
  }

  #spend(count) {
    const now = this.#now();
    for (let i = 0; i < count; i += 1) this.#sent.push(now);
  }

  #reconcile() {
    const now = this.#now();
    this.#sent = this.#sent.filter((t) => now - t < BUDGET_WINDOW_MS);
    // Leaving first: the server also caps the rooms per connection (PETSTORE_WS_MAX_SUBSCRIPTIONS).
    const leave = [...this.#joined].filter((room) => !this.#wanted.has(room));
    const join = [...this.#wanted].filter((room) => !this.#joined.has(room));
    for (const room of [...leave, ...join]) {
      if (this.#sent.length >= BUDGET) break;
      if (this.#joined.has(room)) {
        this.#joined.delete(room);
        this.#client.unsubscribe(room);
        this.#onLeave(room);
      } else {
        this.#joined.add(room);
        this.#client.subscribe(room, this.#handlers(room));
      }
      this.#sent.push(now);
    }
    const left = leave.some((r) => this.#joined.has(r)) || join.some((r) => !this.#joined.has(r));
    if (left && this.#timer === null) {
      const wait = BUDGET_WINDOW_MS - (now - this.#sent[0]) + 10;
      this.#timer = this.#setTimeout(() => {
        this.#timer = null;
        this.#reconcile();
      }, wait);
    }
  }
}

const SORT_KEYS = {
  id: { key: (pet) => [pet.id], descending: false },
  "-id": { key: (pet) => [pet.id], descending: true },
  name: { key: (pet) => [pet.name ?? "", pet.id], descending: false },
  "-name": { key: (pet) => [pet.name ?? "", pet.id], descending: true },
};

/**
 * Strings by code point, as the server orders names on every database (SQLite's BINARY,
 * PostgreSQL's COLLATE "C"): JavaScript's `<` compares UTF-16 units, which puts an astral
 * character (an emoji) before U+E000..U+FFFF; localeCompare follows a language instead.
 */
export function compareCodePoints(a, b) {
  const left = a[Symbol.iterator]();
  const right = b[Symbol.iterator]();
  for (;;) {
    const x = left.next();
    const y = right.next();
    if (x.done || y.done) return x.done === y.done ? 0 : x.done ? -1 : 1;
    const difference = x.value.codePointAt(0) - y.value.codePointAt(0);
    if (difference !== 0) return difference < 0 ? -1 : 1;
  }
}

/** Sort keys ([name, id] or [id]) in the server's order. */
export function compareKeys(a, b) {
  for (let i = 0; i < a.length; i += 1) {
    const order = typeof a[i] === "string" ? compareCodePoints(a[i], b[i]) : Math.sign(a[i] - b[i]);
    if (order !== 0) return order;
  }
  return 0;
}

/** Does `pet` pass `filter` ({q, status, tag, category})? The same rules as the server's search. */
export function matches(pet, filter) {
  if (filter.q && !(pet.name ?? "").toLowerCase().includes(filter.q.toLowerCase())) return false;
  if (filter.status && pet.status !== filter.status) return false;
  if (filter.tag && !(pet.tags ?? []).some((t) => t.name === filter.tag)) return false;
  if (filter.category && pet.category?.name !== filter.category) return false;
  return true;
}

export class PetSearch {
  #api;
  #body = $("pets-table").tBodies[0];
  #rows = new Map(); // pet id -> { row, ts }
  #buffer = null; // pets-room events that arrive while a page loads, applied after it
  #filter = { q: "", status: "", tag: "", category: "", sort: "-id" };
  #cursors = [null]; // the cursor of each page walked so far; [page] is this page's
  #page = 0;
  #next = null;
  #total = null;
  #loaded = false;
  #loading = Promise.resolve();
  #rooms;
  #live = new Set(); // ids of the pets whose room has answered: their rows are marked data-live

  constructor(api, client) {
    this.#api = api;
    const idOf = (room) => Number(room.split(":")[1]);
    this.#rooms = new RoomBudget(
      client,
      (room) => ({
        onSnapshot: (pet) => {
          this.#live.add(idOf(room));
          this.#rows.get(idOf(room))?.row.setAttribute("data-live", "true");
          this.#update(pet, null);
        },
        onResync: (pet) => this.#update(pet, null),
        onEvent: (message) => this.#roomEvent(message),
        onError: () => undefined, // a pet deleted meanwhile: its room is not_found, the row is marked by `pets`
      }),
      (room) => {
        this.#live.delete(idOf(room));
        this.#rows.get(idOf(room))?.row.removeAttribute("data-live");
      },
    );
    this.#wire();
  }

  get loaded() {
    return this.#loaded;
  }

  get filter() {
    return { ...this.#filter };
  }

  /** (Re)load the current page; loads asked for while one runs happen one after the other. */
  load() {
    this.#loading = this.#loading.then(() => this.#load());
    return this.#loading;
  }

  /** An event of the `pets` room. */
  apply(message) {
    if (this.#buffer !== null) {
      this.#buffer.push(message);
      return;
    }
    const pet = message.data;
    if (message.event === "pet.deleted") this.#deleted(pet.id);
    else if (message.event === "pet.created") this.#arrived(pet, message.ts, { counted: true });
    else if (this.#rows.has(pet.id)) this.#update(pet, message.ts);
    // A pet changed into the search (renamed to match, put back on sale): shown as a new one
    // would be. Not counted: it may have matched before, on another page.
    else this.#arrived(pet, message.ts, { counted: false });
  }

  #wire() {
    const form = $("search-form");
    form.addEventListener("submit", (submit) => {
      submit.preventDefault();
      const data = new FormData(form);
      this.#filter = Object.fromEntries(
        ["q", "status", "tag", "category", "sort"].map((name) => [name, String(data.get(name) ?? "").trim()]),
      );
      this.#cursors = [null];
      this.#page = 0;
      this.load();
    });
    // Choosing a status or a sort searches at once; typing, once the typist pauses (or at Enter).
    for (const testid of ["search-status", "search-sort"]) {
      $(testid).addEventListener("change", () => form.requestSubmit());
    }
    let typing = null;
    form.addEventListener("input", (input) => {
      if (input.target.tagName !== "INPUT") return;
      clearTimeout(typing);
      typing = setTimeout(() => form.requestSubmit(), TYPING_PAUSE_MS);
    });
    form.addEventListener("submit", () => clearTimeout(typing));
    $("page-next").addEventListener("click", () => {
      if (this.#next === null) return;
      this.#cursors[this.#page + 1] = this.#next;
      this.#page += 1;
      this.load();
    });
    $("page-previous").addEventListener("click", () => {
      if (this.#page === 0) return;
      this.#page -= 1;
      this.load();
    });
  }

  #query() {
    const query = new URLSearchParams({ sort: this.#filter.sort || "-id", limit: String(PAGE_SIZE) });
    for (const name of ["q", "status", "tag", "category"]) {
      if (this.#filter[name]) query.set(name, this.#filter[name]);
    }
    const cursor = this.#cursors[this.#page];
    if (cursor) query.set("cursor", cursor);
    return query;
  }

  async #load() {
    this.#buffer = [];
    const note = $("pets-note");
    $("pets-panel").setAttribute("aria-busy", "true");
    try {
      const response = await fetch(`${this.#api}/pet/search?${this.#query()}`, {
        headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(await problem(response));
      const page = await response.json();
      this.#rows.clear();
      this.#body.replaceChildren(...page.items.map((pet) => this.#row(pet, null)));
      this.#next = page.next;
      this.#total = { n: page.total, exact: page.total_exact };
      note.hidden = true;
      this.#loaded = true;
    } catch (error) {
      note.textContent = `Could not load the pets (${error.message}); retrying when the connection is back.`;
      note.hidden = false;
      this.#loaded = false;
    }
    $("pets-panel").removeAttribute("aria-busy");
    const buffered = this.#buffer;
    this.#buffer = null;
    for (const message of buffered) this.apply(message);
    this.#show();
  }

  #roomEvent(message) {
    const id = Number(message.room.split(":")[1]);
    if (message.event === "pet.deleted") this.#deleted(id);
    else this.#update(message.data, message.ts);
  }

  /** A pet's newer state, from its room, the `pets` room or its room's snapshot (ts null). */
  #update(pet, ts) {
    if (!pet) return;
    const shown = this.#rows.get(pet.id);
    if (!shown || shown.deleted) return;
    // The same change can come through both rooms; an older one never overwrites a newer one.
    if (ts !== null && shown.ts !== null && ts < shown.ts) return;
    const same = shown.row.dataset.json === JSON.stringify(pet);
    const fresh = this.#row(pet, ts ?? shown.ts);
    if (!matches(pet, this.#filter)) {
      // Changed out of the search (sold, say, in a search for available pets): kept, but said so.
      fresh.dataset.outside = "true";
      fresh.title = "no longer matches the search";
    }
    shown.row.replaceWith(fresh);
    if (!same) flash(fresh);
  }

  /** A pet not shown that matches now (created, or changed into the search): placed in its row's order. */
  #arrived(pet, ts, { counted }) {
    if (!pet || this.#rows.has(pet.id) || !this.#loaded || !matches(pet, this.#filter) || !this.#inPage(pet)) return;
    const sort = SORT_KEYS[this.#filter.sort] ?? SORT_KEYS["-id"];
    const key = sort.key(pet);
    const row = this.#row(pet, ts);
    const after = [...this.#body.rows].find((r) => {
      const other = sort.key(JSON.parse(r.dataset.json));
      return sort.descending ? compareKeys(other, key) < 0 : compareKeys(other, key) > 0;
    });
    this.#body.insertBefore(row, after ?? null);
    row.dataset.fresh = "true";
    flash(row);
    if (counted && this.#total) this.#total.n += 1;
    this.#show();
  }

  /** Whether a pet with this sort key belongs between this page's first and last rows. */
  #inPage(pet) {
    const sort = SORT_KEYS[this.#filter.sort] ?? SORT_KEYS["-id"];
    const key = sort.key(pet);
    const rows = [...this.#body.rows];
    const order = (a, b) => (sort.descending ? -compareKeys(a, b) : compareKeys(a, b));
    if (this.#page > 0 && rows.length > 0 && order(key, sort.key(JSON.parse(rows[0].dataset.json))) < 0) return false;
    if (this.#next !== null && rows.length > 0 && order(key, sort.key(JSON.parse(rows.at(-1).dataset.json))) > 0) {
      return false;
    }
    return true;
  }

  #deleted(id) {
    const shown = this.#rows.get(id);
    if (!shown || shown.deleted) return;
    shown.deleted = true;
    const row = shown.row;
    row.dataset.deleted = "true";
    row.dataset.status = "deleted";
    row.classList.add("deleted");
    const pill = row.querySelector(".pill");
    pill.className = "pill deleted";
    pill.textContent = "deleted";
    flash(row);
    this.#subscribe();
  }

  #row(pet, ts) {
    const row = element("tr", {
      attrs: { "data-testid": "pet-row", "data-pet-id": pet.id, "data-status": pet.status },
    });
    row.dataset.json = JSON.stringify(pet);
    if (this.#live.has(pet.id)) row.dataset.live = "true";
    row.append(
      element("td", { className: "num", text: String(pet.id) }),
      element("td", { className: "name", text: pet.name ?? "" }),
      element("td", {}, [element("span", { className: `pill ${pet.status}`, text: pet.status ?? "" })]),
      element("td", { text: pet.category?.name ?? "" }),
      element("td", { text: (pet.tags ?? []).map((t) => t.name).join(", ") }),
    );
    this.#rows.set(pet.id, { row, ts, deleted: false });
    return row;
  }

  #subscribe() {
    const live = [...this.#rows].filter(([, shown]) => !shown.deleted).map(([id]) => `pet:${id}`);
    this.#rooms.want(live);
  }

  #show() {
    this.#subscribe();
    const shown = this.#body.rows.length;
    const total = this.#total;
    const found = total === null ? "" : `${total.exact ? "" : "about "}${total.n.toLocaleString()} found`;
    $("pets-count").textContent = `${shown.toLocaleString()} shown${found ? ` · ${found}` : ""}`;
    const first = this.#page * PAGE_SIZE + 1;
    $("page-info").textContent =
      shown === 0
        ? "no pets match"
        : `page ${(this.#page + 1).toLocaleString()}: pets ${first.toLocaleString()}–${(first + shown - 1).toLocaleString()}`;
    $("page-previous").disabled = this.#page === 0;
    $("page-next").disabled = this.#next === null;
    $("pets-table").dataset.page = String(this.#page);
  }
}
