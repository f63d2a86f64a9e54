// The live dashboard at `/`: inventory counts with their recent history, a search over the pets
// whose rows stay live, a feed of pet and order events, the signed-in views (orders, users) and
// the connection state, said in words. Everything it shows comes from the public API: REST under
// /api/v3 and the rooms of /ws (SPEC §3), through petstore-client.js, the same client other
// dashboards use.
import { OrdersView, UsersView, tokenRole } from "./accounts.js";
import { $, element } from "./dom.js";
import { PetSearch } from "./pet-search.js";
import { CloseCode, PetstoreClient, State } from "./petstore-client.js";

// Relative to the page, so that behind a proxy's path prefix (petstore serve --root-path) every
// call goes under it too.
const API = new URL("api/v3", document.baseURI).pathname;
const ORIGIN_CHECK = new URL("origin", document.baseURI).pathname;
const STATUSES = ["available", "pending", "sold"];
const FEED_LIMIT = 200; // feed items kept on the page; older ones scroll away for good
const HISTORY_LIMIT = 60; // points in the inventory chart
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

/** What the badge's detail says about a connection problem (docs/dashboard.md has the table). */
const REASON = Object.freeze({
  REFUSED_ORIGIN: "refused: this page's origin is not allowed (set PETSTORE_ALLOWED_ORIGINS)",
  RESTARTING: "server restarting",
  OFFLINE: "offline",
  NO_ANSWER: "offline: the server does not answer",
  SIGNED_OUT: "refused: the session ended; sign in again",
});

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

  /**
   * One line per status, each scaled to its own range (min to max of the points shown), so that
   * a change of 1 in 20,000 is as visible as a change of 1 in 3; the current number and the
   * range are written beside it.
   */
  #draw() {
    const chart = $("inventory-chart");
    const points = this.#history;
    const step = points.length > 1 ? 300 / (points.length - 1) : 300;
    for (const status of STATUSES) {
      const values = points.map((p) => p[status]);
      const low = Math.min(...values);
      const high = Math.max(...values);
      const span = high - low;
      // A single point, or a series that did not move, is drawn as a flat line in the middle.
      const coords = (values.length === 1 ? [values[0], values[0]] : values).map((v, i) => {
        const y = span === 0 ? 20 : 36 - ((v - low) / span) * 32;
        return `${(i * step).toFixed(1)},${y.toFixed(1)}`;
      });
      chart.querySelector(`.line.${status}`).setAttribute("points", coords.join(" "));
      $(`chart-now-${status}`).textContent = values.at(-1).toLocaleString();
      $(`chart-range-${status}`).textContent =
        span === 0 ? "no change" : `${low.toLocaleString()}–${high.toLocaleString()}`;
    }
    chart.dataset.points = String(points.length);
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
  pets = new PetSearch(API, this.client);
  session = new Session(this.client, (s) => this.#showSession(s));
  orders = new OrdersView(API, this.client, this.session);
  users = new UsersView(API, this.session);
  #url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${new URL("ws", document.baseURI).pathname}`;
  #restarting = false; // the last close was 1012: the server said it is restarting
  #refused = false;

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
    window.addEventListener("offline", () => this.#detail(REASON.OFFLINE));
    window.addEventListener("online", () => {
      // Back on a network: try now rather than at the end of a long backoff.
      if (this.client.state === State.RECONNECTING) this.client.connect();
      else if (!this.#refused && this.client.state !== State.CLOSED) this.#detail("");
    });
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
    if (this.#refused) return;
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
    if (up) {
      this.#restarting = false;
      this.#detail("");
    }
    if (up && !this.pets.loaded && this.client.position("pets") !== null) this.pets.load();
    if (state === State.RECONNECTING) {
      if (code === CloseCode.RESTARTING) this.#restarting = true;
      if (this.#restarting) {
        // The server said so (1012): nothing to ask it while it is away.
        this.#detail(REASON.RESTARTING);
      } else if (code !== CloseCode.NORMAL) {
        await this.#diagnose(); // a 1000 is our own reconnect (signing out): nothing to say
      }
    }
    if (state === State.CLOSED && code === CloseCode.POLICY) {
      if (this.session.token) {
        // The token expired on the live connection: refresh it, else go on anonymously.
        await this.session.tokenRefused();
        this.client.connect();
      } else {
        this.#detail(REASON.SIGNED_OUT);
      }
    }
  }

  /**
   * Why the connection is down, in words. A browser sees only 1006 for an upgrade the server
   * refused (403 for the Origin), so the page asks the server over REST whether its origin is
   * allowed: a REST answer also tells "the server is up" from "no answer at all".
   */
  async #diagnose() {
    if (!navigator.onLine) return this.#detail(REASON.OFFLINE);
    const query = new URLSearchParams({ origin: location.origin });
    const answer = await fetch(`${ORIGIN_CHECK}?${query}`, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(async (response) => ({ status: response.status, body: await response.json().catch(() => ({})) }))
      .catch(() => null);
    if (this.client.state !== State.RECONNECTING) return undefined; // back meanwhile
    if (answer !== null && answer.status === 200 && answer.body.allowed === false) {
      // No retry can fix this: stop, and say what would.
      this.#refused = true;
      this.client.close();
      const badge = $("connection-state");
      badge.dataset.state = "refused";
      badge.textContent = "refused";
      // REST still answers: show the store as it is now, without live changes.
      if (!this.pets.loaded) this.pets.load();
      return this.#detail(REASON.REFUSED_ORIGIN);
    }
    if (answer?.status === 503) return this.#detail(REASON.RESTARTING);
    return this.#detail(answer === null ? REASON.NO_ANSWER : "connection lost; retrying");
  }

  #detail(text) {
    const detail = $("connection-detail");
    detail.textContent = text;
    detail.dataset.reason = text;
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
    const role = session ? tokenRole(session.access_token) : null;
    $("session-role").textContent = role ? `(${role})` : "";
    const staff = role === "staff" || role === "admin";
    $("orders-note").textContent = !session
      ? "Pet events. Sign in as staff to see orders too."
      : staff
        ? "Pet and order events."
        : "Pet events. Orders are for staff accounts.";
    this.orders.show(session, staff ? (message) => this.feed.add(message) : null);
    this.users.show(session);
  }
}

new Dashboard().start();
