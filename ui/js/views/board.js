// The Board: every joined mesh's shared state (what sessions wrote with set_state: locks, who
// does what, hand-offs), opened on this device, refreshed whenever an entry changes. Values
// were written by peers: shown as text, never acted on.

import { h, setChildren, pageHead } from "../dom.js";
import { ago, isoMs, stateValue } from "../format.js";
import { icon } from "../icons.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-board" });
  const body = h("div", {}, h("div", { class: "card" }, h("div", { class: "empty" }, "Loading…")));
  container.appendChild(page);
  setChildren(
    page,
    pageHead(
      "Board",
      "The meshes' shared state, end-to-end encrypted: the broker cannot read a name or a value.",
      h("button", { class: "btn", testid: "board-refresh", onclick: () => load() }, "Refresh"),
    ),
    body,
  );

  let reloading = null;
  async function load() {
    try {
      draw(await ctx.call("board"));
    } catch (error) {
      setChildren(body, h("div", { class: "card" }, h("div", { class: "empty" }, h("strong", {}, "Could not read the board"), error.message)));
    }
  }

  function draw(meshes) {
    if (!meshes.length) {
      setChildren(body, h("div", { class: "card" }, h("div", { class: "empty" }, h("strong", {}, "No meshes yet"), "Join or create a mesh first.")));
      return;
    }
    setChildren(body, meshes.map(meshCard));
  }

  function meshCard(mesh) {
    const head = h("div", { class: "card-head" }, h("h2", {}, mesh.meshName), h("span", { class: "pill" }, mesh.mesh));
    let content;
    if (mesh.error) {
      content = h("div", { class: "empty", testid: "board-error" }, mesh.error);
    } else if (!mesh.entries.length) {
      content = h(
        "div",
        { class: "empty" },
        h("strong", {}, "Nothing on the board"),
        "Sessions write here with set_state; from a terminal: claudemesh state set NAME VALUE.",
      );
    } else {
      content = h(
        "ul",
        { class: "list" },
        mesh.entries.map((entry) =>
          h(
            "li",
            { class: "list-item", testid: "board-entry", "data-name": entry.name, "data-mesh": mesh.meshId },
            h("div", { class: "device-glyph" }, icon(entry.name.startsWith("lock/") ? "lock" : "meshes")),
            h(
              "div",
              { class: "main" },
              h("div", { class: "title" }, h("span", { class: "mono" }, entry.name), h("span", { class: "pill" }, `v${entry.version}`)),
              h("div", { class: "board-value mono selectable", testid: "board-value" }, stateValue(entry.value)),
              h(
                "div",
                { class: "detail muted", testid: "board-writer" },
                `by ${entry.writtenBy} · ${ago(isoMs(entry.updatedAt))}`,
                entry.expiresAt ? ` · expires ${ago(isoMs(entry.expiresAt))}` : "",
              ),
            ),
          ),
        ),
      );
    }
    const unreadable = mesh.unreadable
      ? h("div", { class: "detail muted" }, `${mesh.unreadable} entr${mesh.unreadable === 1 ? "y" : "ies"} could not be opened here`)
      : null;
    return h("div", { class: "card", testid: "board-mesh", "data-mesh": mesh.meshId }, head, content, unreadable);
  }

  load();
  return {
    update(state, previous) {
      // An entry changed somewhere: read the board again, once for a burst of changes.
      if (state.boardVersion !== previous.boardVersion && !reloading) {
        reloading = setTimeout(() => {
          reloading = null;
          load();
        }, 150);
      }
    },
  };
}
