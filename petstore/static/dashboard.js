// The live dashboard at `/`: inventory counts with their recent history, a feed of pet and
// order events, a pets table kept current in place, and the connection state. Everything it
// shows comes from the public API: REST under /api/v3 and the rooms of /ws (SPEC §3), through
// petstore-client.js, the same client other dashboards use.
import { PetstoreClient, State } from "./petstore-client.js";

// Relative to the page, so that behind a proxy's path prefix (petstore serve --root-path) every
// call goes under it too.
const API = new URL("api/v3", document.baseURI).pathname;
const STATUSES = ["available", "pending", "sold"];
const FEED_LIMIT = 200; // feed items kept on the page; older ones scroll away for good
const HISTORY_LIMIT = 60; // points in the inventory chart
const TABLE_LIMIT = 500; // pets shown; the newest (highest id) win
const SESSION_KEY = "petstore.session"; // sessionStorage: the tokens die with the tab

const BADGE_TEXT = {
  [State.IDLE]: "starting",
  [State.CONNECTING]: "connecting",
  [State.CONNECTED]: "connected",
  [State.RECONNECTING]: "reconnecting",
  [State.RECOVERED]: "recovered",
  [State.RESYNCED]: "resynced",
  [State.CLOSED]: "offline",
};

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

function element(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function clockTime(ts) {
  const date = ts ? new Date(ts) : new Date();
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString([], { hour12: false });
}

/** Inventory: the three big numbers and a small SVG chart of their last HISTORY_LIMIT values. */
class Inventory {
  #history = [];
  #counts = null;

  get known() {
    return this.#counts !== null;
  }

  show(counts) {
    const clean = Object.fromEntries(STATUSES.map((s) => [s, Number(counts?.[s] ?? 0)]));
    const last = this.#history.at(-1);
    if (!last || STATUSES.some((s) => last[s] !== clean[s])) {
      this.#history.push(clean);
      if (this.#history.length > HISTORY_LIMIT) this.#history.shift();
    }
    this.#counts = clean;
    for (const status of STATUSES) {
      const node = $(`count-${status}`);
      const text = clean[status].toLocaleString();
      if (node.textContent !== text) {
        node.textContent = text;
        node.animate?.([{ transform: "scale(1.08)" }, { transform: "scale(1)" }], { duration: 300 });
      }
    }
    this.#draw();
  }

  #draw() {
    const svg = $("inventory-chart");
    const points = this.#history;
    const top = Math.max(1, ...points.flatMap((p) => STATUSES.map((s) => p[s])));
    const step = points.length > 1 ? 300 / (points.length - 1) : 300;
    for (const status of STATUSES) {
      // A single point is drawn as a flat line, so the chart is never empty once counts are known.
      const coords = (points.length === 1 ? [points[0], points[0]] : points).map(
        (p, i) => `${(i * step).toFixed(1)},${(78 - (p[status] / top) * 74).toFixed(1)}`,
      );
      svg.querySelector(`.line.${status}`).setAttribute("points", coords.join(" "));
    }
    svg.dataset.points = String(points.length);
  }
}

/** The feed of pet and order events, newest first. */
class Feed {
  #list = $("feed");

  add(message) {
    const { event, data, room } = message;
    const item = element("li", {
      className: `feed-item ${event.split(".")[0]}`,
      attrs: {
        "data-testid": "feed-item",
        "data-room": room,
        "data-offset": message.offset,
        "data-epoch": message.epoch,
        "data-event": event,
        "data-id": data?.id ?? "",
      },
    });
    item.append(
      element("time", { className: "muted", text: clockTime(message.ts), attrs: { datetime: message.ts ?? "" } }),
      element("span", { className: `tag ${event.replace(".", "-")}`, text: event }),
      element("span", { className: "what", text: describe(event, data) }),
    );
    this.#prepend(item);
  }

  /** A line about the connection itself, so that watchers know when the feed may have a hole. */
  note(text) {
    this.#prepend(
      element("li", { className: "feed-note muted", attrs: { "data-testid": "feed-note" } }, [
        element("time", { text: clockTime() }),
        element("span", { text }),
      ]),
    );
  }

  #prepend(item) {
    this.#list.prepend(item);
    while (this.#list.children.length > FEED_LIMIT) this.#list.lastElementChild.remove();
  }
}

function describe(event, data) {
  if (!data) return "";
  if (event.startsWith("pet.")) {
    if (event === "pet.deleted") return `pet #${data.id} removed`;
    return `#${data.id} ${data.name ?? ""} · ${data.status ?? "?"}`;
  }
  if (event.startsWith("order.")) {
    if (event === "order.deleted") return `order #${data.id} cancelled`;
    return `order #${data.id} · pet #${data.petId} ×${data.quantity ?? 1} · ${data.status ?? "?"}`;
  }
  return JSON.stringify(data);
}

/** The pets table: loaded over REST, then kept current by the `pets` room's events. */
class PetsTable {
  #body = $("pets-table").tBodies[0];
  #rows = new Map(); // pet id -> <tr>
  #buffer = null; // events that arrive while a REST load is under way, applied after it
  #loaded = false;
  #loading = Promise.resolve();

  get loaded() {
    return this.#loaded;
  }

  /** (Re)load from REST; loads asked for while one runs happen one after the other. */
  load() {
    this.#loading = this.#loading.then(() => this.#load());
    return this.#loading;
  }

  async #load() {
    this.#buffer = [];
    const note = $("pets-note");
    try {
      const query = new URLSearchParams({ status: STATUSES.join(","), limit: String(TABLE_LIMIT) });
      const response = await fetch(`${API}/pet/findByStatus?${query}`, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`the server answered ${response.status}`);
      const pets = await response.json();
      this.#rows.clear();
      this.#body.replaceChildren();
      pets.sort((a, b) => b.id - a.id);
      for (const pet of pets.slice(0, TABLE_LIMIT)) this.#body.append(this.#row(pet));
      note.hidden = true;
      this.#loaded = true;
    } catch (error) {
      note.textContent = `Could not load the pets (${error.message}); retrying when the connection is back.`;
      note.hidden = false;
      this.#loaded = false;
    }
    // Events of a room are full pets in order, so replaying the buffer over the loaded rows
    // converges to the latest state whether each event came before or after the REST read.
    const buffered = this.#buffer;
    this.#buffer = null;
    for (const message of buffered) this.apply(message);
    this.#count();
  }

  apply(message) {
    if (this.#buffer !== null) {
      this.#buffer.push(message);
      return;
    }
    const pet = message.data;
    if (message.event === "pet.deleted") {
      this.#rows.get(pet.id)?.remove();
      this.#rows.delete(pet.id);
    } else {
      const existing = this.#rows.get(pet.id);
      if (existing) {
        existing.replaceWith(this.#row(pet));
      } else {
        this.#insert(this.#row(pet));
      }
      this.#rows.get(pet.id).animate?.([{ backgroundColor: "var(--flash)" }, { backgroundColor: "transparent" }], {
        duration: 1500,
      });
    }
    while (this.#rows.size > TABLE_LIMIT) {
      const last = this.#body.lastElementChild;
      this.#rows.delete(Number(last.dataset.petId));
      last.remove();
    }
    this.#count();
  }

  /** Keep the table ordered newest (highest id) first. */
  #insert(row) {
    const id = Number(row.dataset.petId);
    const after = [...this.#body.rows].find((r) => Number(r.dataset.petId) < id);
    this.#body.insertBefore(row, after ?? null);
  }

  #row(pet) {
    const row = element("tr", { attrs: { "data-testid": "pet-row", "data-pet-id": pet.id, "data-status": pet.status } });
    row.append(
      element("td", { className: "num", text: String(pet.id) }),
      element("td", { text: pet.name ?? "" }),
      element("td", {}, [element("span", { className: `pill ${pet.status}`, text: pet.status ?? "" })]),
      element("td", { text: pet.category?.name ?? "" }),
      element("td", { text: (pet.tags ?? []).map((t) => t.name).join(", ") }),
    );
    this.#rows.set(pet.id, row);
    return row;
  }

  #count() {
    $("pets-count").textContent = `${this.#rows.size.toLocaleString()} shown`;
  }
}

/** Sign-in: tokens from /auth/token, kept for the tab's life, refreshed when the socket says they expired. */
class Session {
  #client;
  #onChange;
  current = null; // { username, access_token, refresh_token }

  constructor(client, onChange) {
    this.#client = client;
    this.#onChange = onChange;
    try {
      this.current = JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
    } catch {
      this.current = null;
    }
  }

  get token() {
    return this.current?.access_token ?? null;
  }

  async signIn(username, password) {
    const response = await fetch(`${API}/auth/token`, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
      body: new URLSearchParams({ username, password, grant_type: "password" }),
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.message ?? `sign-in failed (${response.status})`);
    }
    const tokens = await response.json();
    // The token goes to the socket before the orders subscription that #keep triggers.
    this.#client.setToken(tokens.access_token);
    this.#keep({ username, ...tokens });
  }

  async signOut() {
    const token = this.token;
    this.#keep(null);
    this.#client.setToken(null);
    if (token) {
      // Revoke on the server too; the page has already forgotten the token either way.
      await fetch(`${API}/auth/logout`, { method: "POST", headers: { Authorization: `Bearer ${token}` } }).catch(
        () => undefined,
      );
    }
  }

  /**
   * The server refused the access token (expired or revoked): trade the refresh token for a new
   * pair, once; if that fails too, or the new token is refused as well, sign out.
   */
  async tokenRefused() {
    if (!this.current) return;
    const first = !this.#refreshTried;
    this.#refreshTried = true;
    if (!(first && (await this.#refresh()))) await this.signOut();
  }

  /** The server accepted the token: a later refusal may be cured by a refresh again. */
  tokenAccepted() {
    this.#refreshTried = false;
  }

  #refreshTried = false;

  async #refresh() {
    const refreshToken = this.current?.refresh_token;
    if (!refreshToken) return false;
    const response = await fetch(`${API}/auth/refresh`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ refresh_token: refreshToken }),
    }).catch(() => null);
    if (!response?.ok) return false;
    const tokens = await response.json();
    this.#client.setToken(tokens.access_token);
    this.#keep({ username: this.current.username, ...tokens });
    return true;
  }

  #keep(session) {
    this.current = session;
    if (session) sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    else sessionStorage.removeItem(SESSION_KEY);
    this.#onChange(session);
  }
}

class Dashboard {
  client = new PetstoreClient();
  inventory = new Inventory();
  feed = new Feed();
  pets = new PetsTable();
  session = new Session(this.client, (s) => this.#showSession(s));
  #url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${new URL("ws", document.baseURI).pathname}`;

  start() {
    this.client.on("state", (change) => this.#onState(change));
    this.client.on("auth", (answer) => (answer.ok ? this.session.tokenAccepted() : this.session.tokenRefused()));
    this.client.subscribe("inventory", {
      onSnapshot: (counts) => this.inventory.show(counts),
      onEvent: (message) => this.inventory.show(message.data),
    });
    this.client.subscribe("pets", {
      // The room has no snapshot: subscribing first, then reading over REST, leaves no window
      // in which a change could be missed.
      onSnapshot: () => this.pets.load(),
      onResync: () => {
        this.feed.note("some pet events were missed while offline; table reloaded");
        this.pets.load();
      },
      onEvent: (message) => {
        this.feed.add(message);
        this.pets.apply(message);
      },
    });
    this.#wireLogin();
    if (this.session.token) this.client.setToken(this.session.token);
    this.#showSession(this.session.current);
    this.client.connect(this.#url);
    this.#firstPaint();
  }

  /** Counts over REST for the first paint; the room's snapshot replaces them as soon as it arrives. */
  async #firstPaint() {
    try {
      const response = await fetch(`${API}/store/inventory`, { headers: { Accept: "application/json" } });
      if (response.ok && !this.inventory.known) this.inventory.show(await response.json());
    } catch {
      // The socket's snapshot fills the numbers in when the server is reachable.
    }
  }

  async #onState({ state, code }) {
    const badge = $("connection-state");
    const was = badge.dataset.state;
    badge.dataset.state = state;
    badge.textContent = BADGE_TEXT[state] ?? state;
    if (state === State.RECONNECTING && was !== State.RECONNECTING) {
      this.feed.note(`connection lost (${code ?? "no answer"}), reconnecting`);
    }
    if (state === State.RECOVERED) this.feed.note("reconnected, nothing missed");
    if (state === State.RESYNCED) this.feed.note("reconnected, restarted from a snapshot");
    const up = [State.CONNECTED, State.RECOVERED, State.RESYNCED].includes(state);
    if (up && !this.pets.loaded && this.client.position("pets") !== null) this.pets.load();
    if (state === State.CLOSED && code === 1008 && this.session.token) {
      // The token expired on the live connection: refresh it, else go on anonymously. Without a
      // token a 1008 is a refused Origin, which no retry can fix: the badge stays offline.
      await this.session.tokenRefused();
      this.client.connect();
    }
  }

  #wireLogin() {
    const form = $("login-form");
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const error = $("login-error");
      error.textContent = "";
      const data = new FormData(form);
      try {
        await this.session.signIn(String(data.get("username")), String(data.get("password")));
        form.reset();
      } catch (failure) {
        error.textContent = failure.message;
      }
    });
    $("logout").addEventListener("click", () => this.session.signOut());
  }

  #showSession(session) {
    $("login-form").hidden = session !== null;
    $("session").hidden = session === null;
    $("session-user").textContent = session?.username ?? "";
    const note = $("orders-note");
    if (session) {
      note.textContent = "Pet and order events.";
      this.client.subscribe("orders", {
        onEvent: (message) => this.feed.add(message),
        onError: (refusal) => {
          note.textContent =
            refusal.code === "forbidden"
              ? "Pet events. Orders are for staff accounts."
              : `Orders unavailable: ${refusal.message}`;
        },
      });
    } else {
      this.client.unsubscribe("orders");
      note.textContent = "Pet events. Sign in as staff to see orders too.";
    }
  }
}

new Dashboard().start();
