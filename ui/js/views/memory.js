// Memory: search what the meshes remember (searched on this device, in its own index, offline
// too), remember something new, forget what is wrong. Memories were written by peers: shown as
// text, never acted on.

import { h, setChildren, confirmDialog, showError, pageHead } from "../dom.js";
import { ago, isoMs } from "../format.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-memory" });
  const query = h("input", { class: "input", testid: "memory-query", placeholder: "Search: words, any of them" });
  const results = h("div", { class: "card" }, h("div", { class: "empty" }, "Loading…"));
  const meshes = ctx.state.status.meshes;
  const meshSelect = h(
    "select",
    { class: "input", testid: "memory-mesh" },
    meshes.map((m) => h("option", { value: m.id }, m.name)),
  );
  const text = h("textarea", { class: "input", rows: 2, testid: "memory-text", placeholder: "Something the mesh should remember" });
  const tags = h("input", { class: "input", testid: "memory-tags", placeholder: "tags, comma-separated (optional)" });
  container.appendChild(page);
  setChildren(
    page,
    pageHead("Memory", "What the meshes remember, end-to-end encrypted, searched on this computer."),
    h(
      "form",
      {
        class: "card",
        onsubmit: (event) => {
          event.preventDefault();
          search();
        },
      },
      h("div", { class: "card-body memory-search" }, query, h("button", { class: "btn primary", type: "submit", testid: "memory-search" }, "Search")),
    ),
    results,
    h(
      "div",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Remember")),
      h(
        "div",
        { class: "card-body memory-add" },
        text,
        h(
          "div",
          { class: "memory-add-row" },
          tags,
          meshes.length > 1 ? meshSelect : null,
          h("button", { class: "btn", testid: "memory-remember", onclick: () => remember() }, "Remember"),
        ),
      ),
    ),
  );

  async function search() {
    try {
      draw(await ctx.call("recall", { query: query.value, meshId: null }));
    } catch (error) {
      setChildren(results, h("div", { class: "empty" }, h("strong", {}, "Could not search"), error.message));
    }
  }

  async function remember() {
    if (!text.value.trim()) return;
    const meshId = meshes.length > 1 ? meshSelect.value : meshes[0]?.id;
    const tagList = tags.value.split(",").map((t) => t.trim()).filter(Boolean);
    try {
      await ctx.call("remember", { meshId, text: text.value, tags: tagList });
      text.value = "";
      tags.value = "";
      await search();
    } catch (error) {
      showError(error);
    }
  }

  function draw(view) {
    const offline = view.offline.length
      ? h("div", { class: "detail muted", testid: "memory-offline" }, `Not synced just now (${view.offline.join(", ")}): showing what this computer has.`)
      : null;
    if (!view.memories.length) {
      setChildren(
        results,
        offline,
        h(
          "div",
          { class: "empty" },
          h("strong", {}, query.value.trim() ? "Nothing remembered matches" : "Nothing remembered yet"),
          "Sessions remember with the remember tool; from a terminal: claudemesh remember TEXT.",
        ),
      );
      return;
    }
    setChildren(
      results,
      offline,
      h(
        "ul",
        { class: "list" },
        view.memories.map((memory) =>
          h(
            "li",
            { class: "list-item", testid: "memory-row", "data-id": memory.id },
            h(
              "div",
              { class: "main" },
              h("div", { class: "memory-text selectable", testid: "memory-row-text" }, memory.text),
              h(
                "div",
                { class: "detail muted" },
                h("span", { class: "pill" }, memory.mesh),
                ...memory.tags.map((tag) => h("span", { class: "pill accent" }, tag)),
                ` by ${memory.rememberedBy} · ${ago(isoMs(memory.at))}`,
              ),
            ),
            h("button", { class: "btn small danger", testid: "memory-forget", onclick: () => confirmForget(memory) }, "Forget"),
          ),
        ),
      ),
    );
  }

  function confirmForget(memory) {
    confirmDialog({
      title: "Forget this memory?",
      text: "It is forgotten for the whole mesh.",
      label: "Forget it",
      testid: "memory-forget-confirm",
      action: async () => {
        await ctx.call("forget", { meshId: memory.meshId, id: memory.id });
        await search();
      },
    });
  }

  search();
  return {};
}
