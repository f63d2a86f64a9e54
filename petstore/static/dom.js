// Small DOM helpers shared by the dashboard's modules.

export const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

export function element(tag, { className, text, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attrs ?? {})) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

/** A short highlight of a row that changed. */
export function flash(node) {
  node.animate?.([{ backgroundColor: "var(--flash)" }, { backgroundColor: "transparent" }], { duration: 1500 });
}

/** The JSON error shape's message, or the status. */
export async function problem(response) {
  const body = await response.json().catch(() => ({}));
  return body.message ?? `the server answered ${response.status}`;
}
