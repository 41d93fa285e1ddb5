import { initials, colorFor } from "./format.js";

// A tiny DOM helper: h("div", {class: "x", onclick: f}, child, …). Text is always set as text,
// never parsed as HTML; only the app's own QR-code SVG goes in through `svg()`.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else if (key === "testid") element.dataset.testid = value;
    else if (key === "value") element.value = value;
    else if (key === "checked") element.checked = Boolean(value);
    else if (value === true) element.setAttribute(key, "");
    else element.setAttribute(key, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** An element holding an SVG document the Rust side rendered (QR codes). */
export function svg(markup, cls = "qr") {
  const box = h("div", { class: cls });
  const parsed = new DOMParser().parseFromString(markup, "image/svg+xml").documentElement;
  if (parsed && parsed.nodeName === "svg") box.appendChild(document.importNode(parsed, true));
  return box;
}

/** Replaces the children of `element`. */
export function setChildren(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

/** A short message in the corner. */
export function toast(message, kind = "") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, testid: "toast" }, message);
  box.appendChild(item);
  setTimeout(() => item.remove(), kind === "bad" ? 7000 : 3500);
}

/** Shows an error from a command. */
export function showError(error) {
  toast(error?.message ?? String(error), "bad");
}

/** A modal dialog; returns a function that closes it. */
export function dialog({ title, body, foot = [], wide = false, testid }) {
  const overlay = h("div", { class: "overlay" });
  const close = () => overlay.remove();
  const panel = h(
    "div",
    { class: `dialog ${wide ? "wide" : ""}`, testid },
    h("div", { class: "dialog-head" }, h("h2", {}, title), h("button", { class: "btn ghost small", onclick: close }, "✕")),
    h("div", { class: "dialog-body" }, body),
    foot.length ? h("div", { class: "dialog-foot" }, foot) : null,
  );
  overlay.appendChild(panel);
  overlay.addEventListener("mousedown", (event) => {
    if (event.target === overlay) close();
  });
  document.body.appendChild(overlay);
  panel.querySelector("input, textarea")?.focus();
  return close;
}

/** A dialog asking to confirm `action` (the primary button, labelled `label`): clicking it runs
 * the action (the button busy meanwhile) and closes the dialog once it succeeded. */
export function confirmDialog({ title, text, label, testid, action }) {
  const confirm = h(
    "button",
    {
      class: "btn primary",
      testid,
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          await action();
          close();
        }),
    },
    label,
  );
  const close = dialog({ title, body: h("p", { class: "muted" }, text), foot: [confirm] });
}

/** A labelled switch. */
export function toggle({ checked, onchange, testid }) {
  return h(
    "label",
    { class: "switch" },
    h("input", { type: "checkbox", checked, testid, onchange: (e) => onchange(e.target.checked) }),
    h("span"),
  );
}

/** Runs an async action with `button` disabled meanwhile; errors become a toast. */
export async function busy(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** A round avatar with initials in the name's colour, and a presence dot when `status` is given. */
export function avatar(name, status = null) {
  const element = h("div", { class: "avatar" }, initials(name), status ? h("span", { class: `presence ${status}` }) : null);
  // Set through the CSSOM: the content security policy allows no inline style attributes.
  element.style.background = colorFor(name);
  return element;
}

/** A view's heading: its title, a line under it, and buttons on the right. */
export function pageHead(title, sub, ...actions) {
  const heading = h("div", {}, h("h1", {}, title), h("p", { class: "sub" }, sub));
  return h("div", { class: "page-head" }, heading, actions.length ? h("div", { class: "actions" }, ...actions) : null);
}
