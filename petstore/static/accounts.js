// The signed-in views: orders (staff and admins: every order, from the `orders` room, with a
// status they can change; customers: their own, from `user:{name}`), and users (admins: every
// account, with a role they can change).
//
// The Petstore document has no operation that changes an order; this server's extension
// `PATCH /api/v3/store/order/{orderId}` with `{"status": ...}` (staff and admins) does, and
// `PATCH /api/v3/user/{username}` with `{"role": ...}` (admins) changes a role.
import { $, element, flash, problem } from "./dom.js";

const ORDER_STATUSES = ["placed", "approved", "delivered"];
const ROLES = ["customer", "staff", "admin"];
const ORDERS_SHOWN = 50;

/** The role a token says (for what to show only: the server checks every request itself). */
export function tokenRole(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).role ?? null;
  } catch {
    return null;
  }
}

function authorized(session, extra = {}) {
  return { Accept: "application/json", Authorization: `Bearer ${session.token}`, ...extra };
}

export class OrdersView {
  #api;
  #client;
  #session;
  #room = null;
  #staff = false;
  #body = $("orders-table").tBodies[0];
  #rows = new Map(); // order id -> <tr>
  #buffer = null;

  constructor(api, client, session) {
    this.#api = api;
    this.#client = client;
    this.#session = session;
  }

  /** Show the orders for this session (null: hide them). `onOrder(message)` sees each event too. */
  show(current, onOrder) {
    const panel = $("orders-panel");
    if (this.#room) this.#client.unsubscribe(this.#room);
    this.#room = null;
    this.#rows.clear();
    this.#body.replaceChildren();
    if (!current) {
      panel.hidden = true;
      return;
    }
    const role = tokenRole(current.access_token);
    this.#staff = role === "staff" || role === "admin";
    panel.hidden = false;
    panel.dataset.scope = this.#staff ? "all" : "own";
    $("orders-scope").textContent = this.#staff ? "every order, live" : "your orders, live";
    for (const cell of panel.querySelectorAll(".staff-only")) cell.hidden = !this.#staff;
    this.#room = this.#staff ? "orders" : `user:${current.username}`;
    this.#client.subscribe(this.#room, {
      // Neither room has a snapshot: subscribed first, then read over REST, no change is missed.
      onSnapshot: () => this.#load(),
      onResync: () => this.#load(),
      onEvent: (message) => {
        onOrder?.(message);
        this.#apply(message);
      },
      onError: (refusal) => this.#note(`Live orders unavailable: ${refusal.message}`),
    });
  }

  get staff() {
    return this.#staff;
  }

  async #load() {
    this.#buffer = [];
    try {
      const response = await fetch(`${this.#api}/store/orders?limit=${ORDERS_SHOWN}`, {
        headers: authorized(this.#session),
      });
      if (!response.ok) throw new Error(await problem(response));
      const orders = await response.json();
      this.#rows.clear();
      this.#body.replaceChildren(...orders.map((order) => this.#row(order)));
      this.#note(orders.length ? null : "No orders yet.");
    } catch (error) {
      this.#note(`Could not load the orders (${error.message}).`);
    }
    const buffered = this.#buffer;
    this.#buffer = null;
    for (const message of buffered) this.#apply(message);
  }

  #apply(message) {
    if (this.#buffer !== null) {
      this.#buffer.push(message);
      return;
    }
    const order = message.data;
    const existing = this.#rows.get(order.id);
    if (message.event === "order.deleted") {
      if (existing) {
        existing.dataset.status = "cancelled";
        existing.querySelector(".pill").textContent = "cancelled";
        existing.classList.add("deleted");
      }
      return;
    }
    const row = this.#row(order);
    if (existing) existing.replaceWith(row);
    else this.#body.prepend(row);
    this.#note(null);
    flash(row);
  }

  #row(order) {
    const row = element("tr", {
      attrs: { "data-testid": "order-row", "data-order-id": order.id, "data-status": order.status },
    });
    row.append(
      element("td", { className: "num", text: `#${order.id}` }),
      element("td", { className: "num", text: `#${order.petId}` }),
      element("td", { className: "num", text: String(order.quantity ?? 1) }),
      element("td", {}, [element("span", { className: `pill ${order.status}`, text: order.status })]),
    );
    if (this.#staff) row.append(element("td", {}, [this.#changer(order)]));
    this.#rows.set(order.id, row);
    return row;
  }

  #changer(order) {
    const id = `order-status-${order.id}`;
    const select = element(
      "select",
      { attrs: { id, "data-testid": "order-status-select" } },
      ORDER_STATUSES.map((status) => element("option", { text: status, attrs: { value: status } })),
    );
    select.value = order.status;
    // A delivered order cannot go back (409): nothing to choose.
    select.disabled = order.status === "delivered";
    const label = element("label", { className: "visually-hidden", text: `Status of order ${order.id}`, attrs: { for: id } });
    const button = element("button", {
      text: "Set",
      attrs: { type: "button", "data-testid": "order-status-set", "aria-label": `Set the status of order ${order.id}` },
    });
    button.disabled = select.disabled;
    button.addEventListener("click", () => this.#change(order.id, select.value, button));
    return element("span", { className: "changer" }, [label, select, button]);
  }

  async #change(id, status, button) {
    button.disabled = true;
    try {
      const response = await fetch(`${this.#api}/store/order/${id}`, {
        method: "PATCH",
        headers: authorized(this.#session, { "Content-Type": "application/json" }),
        body: JSON.stringify({ status }),
      });
      if (!response.ok) throw new Error(await problem(response));
      // The row changes when the room's order.updated arrives, like everyone else's.
      this.#note(null);
    } catch (error) {
      this.#note(`Order #${id} not changed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  #note(text) {
    const note = $("orders-panel-note");
    note.hidden = !text;
    note.textContent = text ?? "";
  }
}

export class UsersView {
  #api;
  #session;
  #body = $("users-table").tBodies[0];

  constructor(api, session) {
    this.#api = api;
    this.#session = session;
  }

  async show(current) {
    const panel = $("users-panel");
    this.#body.replaceChildren();
    if (!current || tokenRole(current.access_token) !== "admin") {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    try {
      const response = await fetch(`${this.#api}/user?limit=100`, { headers: authorized(this.#session) });
      if (!response.ok) throw new Error(await problem(response));
      const users = await response.json();
      this.#body.replaceChildren(...users.map((user) => this.#row(user)));
      this.#note(null);
    } catch (error) {
      this.#note(`Could not load the users (${error.message}).`);
    }
  }

  #row(user) {
    const row = element("tr", {
      attrs: { "data-testid": "user-row", "data-username": user.username, "data-role": user.role },
    });
    const id = `user-role-${user.id}`;
    const select = element(
      "select",
      { attrs: { id, "data-testid": "user-role-select" } },
      ROLES.map((role) => element("option", { text: role, attrs: { value: role } })),
    );
    select.value = user.role;
    const button = element("button", {
      text: "Set",
      attrs: { type: "button", "data-testid": "user-role-set", "aria-label": `Set the role of ${user.username}` },
    });
    button.addEventListener("click", () => this.#change(user.username, select.value, row, button));
    row.append(
      element("td", { className: "name", text: user.username }),
      element("td", {}, [element("span", { className: "role", text: user.role, attrs: { "data-testid": "user-role" } })]),
      element("td", {}, [
        element("span", { className: "changer" }, [
          element("label", { className: "visually-hidden", text: `Role of ${user.username}`, attrs: { for: id } }),
          select,
          button,
        ]),
      ]),
    );
    return row;
  }

  async #change(username, role, row, button) {
    button.disabled = true;
    try {
      const response = await fetch(`${this.#api}/user/${encodeURIComponent(username)}`, {
        method: "PATCH",
        headers: authorized(this.#session, { "Content-Type": "application/json" }),
        body: JSON.stringify({ role }),
      });
      if (!response.ok) throw new Error(await problem(response));
      const changed = await response.json();
      row.dataset.role = changed.role;
      row.querySelector(".role").textContent = changed.role;
      flash(row);
      this.#note(null);
    } catch (error) {
      this.#note(`${username}'s role not changed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  #note(text) {
    const note = $("users-note");
    note.hidden = !text;
    note.textContent = text ?? "";
  }
}
