// Conversations per peer, group and mesh; compose and send as a person; each sent message
// shows its delivery state (queued, delivered, or the error).

import { h, setChildren, avatar, busy, dialog, toast } from "../dom.js";
import { ago, clock, deliveryLabel } from "../format.js";
import { withThread, allPeers, peerConversation } from "../store.js";
import { icon } from "../icons.js";

export function mount(container, ctx, param) {
  let open = typeof param === "string" ? { key: param, title: null } : (param ?? null);
  let list = [];
  const listBox = h("div", { class: "conversation-list", testid: "conversation-list" });
  const threadBox = h("section", { class: "thread" });
  const newButton = h("button", { class: "btn small", testid: "new-conversation", onclick: () => pickRecipient(ctx, start) }, "New");
  container.appendChild(
    h(
      "div",
      { class: "messenger", testid: "view-messages" },
      h("aside", { class: "conversations" }, h("div", { class: "conversations-head" }, h("h1", {}, "Messages"), newButton), listBox),
      threadBox,
    ),
  );

  const composer = h("textarea", { class: "input", rows: 1, testid: "composer", placeholder: "Write a message…" });
  const sendButton = h("button", { class: "btn primary", testid: "send", onclick: () => send() }, "Send");
  composer.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    }
  });

  async function send() {
    if (!open || !composer.value.trim()) return;
    const text = composer.value;
    await busy(sendButton, async () => {
      const sent = await ctx.call("send_message", { conversation: open.key, label: title(open.key), text });
      composer.value = "";
      const thread = ctx.state.threads[open.key] ?? [];
      if (!thread.some((m) => m.id === sent.id)) ctx.setState(withThread(ctx.state, open.key, [...thread, sent]));
    });
    composer.focus();
  }

  function start(key, name) {
    open = { key, title: name };
    loadThread();
    drawList();
  }

  function title(key) {
    return list.find((c) => c.key === key)?.title ?? open?.title ?? key;
  }

  async function loadList() {
    try {
      list = await ctx.call("conversations");
    } catch {
      list = [];
    }
    if (!open && list.length) open = { key: list[0].key, title: list[0].title };
    drawList();
  }

  async function loadThread() {
    if (!open) {
      drawThread();
      return;
    }
    const key = open.key;
    try {
      const messages = await ctx.call("conversation", { key });
      ctx.setState(withThread(ctx.state, key, messages));
    } catch {
      drawThread();
    }
  }

  function drawList() {
    const meshNames = Object.fromEntries(ctx.state.status.meshes.map((m) => [m.id, m.name]));
    const entries = list.slice();
    if (open && !entries.some((c) => c.key === open.key)) {
      entries.unshift({ key: open.key, title: open.title ?? "New conversation", meshId: open.key.split(":")[1], kind: open.key.split(":")[0], lastText: "", lastAt: 0, unread: 0 });
    }
    setChildren(
      listBox,
      entries.length
        ? entries.map((c) =>
            h(
              "div",
              {
                class: `conversation ${open?.key === c.key ? "active" : ""}`,
                testid: "conversation",
                "data-key": c.key,
                "data-title": c.title,
                onclick: () => start(c.key, c.title),
              },
              c.kind === "peer" ? avatar(c.title) : h("div", { class: "mesh-icon" }, icon(c.kind === "group" ? "group" : "broadcast")),
              h(
                "div",
                { class: "main" },
                h("div", { class: "top" }, h("span", { class: "name" }, c.title), c.lastAt ? h("span", { class: "when" }, ago(c.lastAt)) : null),
                h("div", { class: "last" }, `${meshNames[c.meshId] ?? ""}${c.lastText ? " · " + c.lastText : ""}`),
              ),
              c.unread ? h("span", { class: "badge" }, String(c.unread)) : null,
            ),
          )
        : h("div", { class: "empty" }, h("strong", {}, "No messages yet"), "Start a conversation with New, or from Peers."),
    );
  }

  function drawThread() {
    if (!open) {
      setChildren(threadBox, h("div", { class: "empty" }, h("strong", {}, "Pick a conversation"), "Messages you send go end-to-end encrypted."));
      return;
    }
    const messages = ctx.state.threads[open.key] ?? [];
    const meshName = ctx.state.status.meshes.find((m) => m.id === open.key.split(":")[1])?.name ?? "";
    const scroller = h(
      "div",
      { class: "messages", testid: "thread" },
      messages.length ? messages.map((m) => bubble(m, releaseButton)) : h("div", { class: "empty" }, "No messages in this conversation yet."),
    );
    setChildren(
      threadBox,
      h(
        "div",
        { class: "thread-head" },
        open.key.startsWith("peer:") ? avatar(title(open.key)) : h("div", { class: "mesh-icon" }, icon(open.key.startsWith("group:") ? "group" : "broadcast")),
        h("div", {}, h("div", { class: "name", testid: "thread-title" }, title(open.key)), h("div", { class: "muted small" }, meshName)),
      ),
      scroller,
      h("div", { class: "composer" }, composer, sendButton),
    );
    scroller.scrollTop = scroller.scrollHeight;
  }

  // Messages between this member and the peer were held by the broker: only a person lets
  // them flow again (no model has this).
  function releaseButton() {
    const key = open.key;
    return h(
      "button",
      {
        class: "btn small",
        testid: "release-pair",
        onclick: (event) =>
          busy(event.currentTarget, async () => {
            const released = await ctx.call("release_pair", { conversation: key });
            toast(released ? "Messages flow again." : "Nothing was held.");
          }),
      },
      "Release messages",
    );
  }

  loadList();
  loadThread();
  return {
    update(state, previous) {
      if (state.conversationsVersion !== previous.conversationsVersion) loadList();
      if (open && state.threads[open.key] !== previous.threads[open.key]) drawThread();
      // A message arrived in the open conversation: load it (and mark it seen).
      if (open && state.conversationsVersion !== previous.conversationsVersion) loadThread();
    },
  };
}

function bubble(message, releaseButton) {
  const out = message.direction === "out";
  const failed = message.delivery?.state === "error";
  // A notice comes from claudemesh itself, not from a peer.
  const unverified = message.verified || message.notice ? "" : " (unverified)";
  return h(
    "div",
    { class: `bubble-row ${out ? "out" : "in"} ${message.notice ? "notice" : ""}`, testid: "message", "data-direction": message.direction, "data-id": message.id },
    out ? null : h("div", { class: "bubble-from" }, message.from, unverified),
    h("div", { class: `bubble ${failed ? "failed" : ""}`, testid: "message-text" }, message.text ?? `Could not be opened: ${message.error ?? "unknown"}`),
    message.notice ? releaseButton() : null,
    h(
      "div",
      { class: "bubble-meta" },
      h("span", {}, clock(message.at)),
      out
        ? h(
            "span",
            { class: `delivery ${message.delivery?.state ?? ""}`, testid: "delivery", "data-state": message.delivery?.state ?? "" },
            deliveryLabel(message.delivery),
          )
        : null,
    ),
  );
}

/** Chooses who to write to: an online peer, or everyone in a mesh. */
function pickRecipient(ctx, start) {
  const peers = allPeers(ctx.state).filter((p) => !p.sameMember);
  const seen = new Set();
  const people = peers.filter((p) => {
    const key = peerConversation(p.meshId, p.memberPubkey);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  // Groups that sessions online now belong to, per mesh.
  const byGroup = new Map();
  for (const p of allPeers(ctx.state)) {
    for (const g of p.groups ?? []) {
      const key = `${p.meshId}:${g.name}`;
      const entry = byGroup.get(key) ?? { name: g.name, meshId: p.meshId, meshName: p.meshName, meshSlug: "", members: 0 };
      entry.members += 1;
      byGroup.set(key, entry);
    }
  }
  const slugs = Object.fromEntries(ctx.state.status.meshes.map((m) => [m.id, m.slug]));
  const groups = [...byGroup.values()].map((g) => ({ ...g, meshSlug: slugs[g.meshId] ?? "" }));
  const choose = (key, name) => {
    close();
    start(key, name);
  };
  const close = dialog({
    title: "New message",
    testid: "new-conversation-dialog",
    body: h(
      "ul",
      { class: "list" },
      people.map((p) =>
        h(
          "li",
          { class: "list-item", testid: "recipient", "data-name": p.name, onclick: () => choose(peerConversation(p.meshId, p.memberPubkey), p.name) },
          avatar(p.name, p.status),
          h("div", { class: "main" }, h("div", { class: "title" }, p.name), h("div", { class: "detail" }, `${p.meshName} · ${p.host ?? ""}`)),
        ),
      ),
      groups.map((g) =>
        h(
          "li",
          { class: "list-item", testid: "recipient", "data-name": `${g.meshSlug}:@${g.name}`, onclick: () => choose(`group:${g.meshId}:@${g.name}`, `@${g.name}`) },
          h("div", { class: "mesh-icon" }, icon("group")),
          h("div", { class: "main" }, h("div", { class: "title" }, `@${g.name}`), h("div", { class: "detail" }, `${g.meshName} · ${g.members} online`)),
        ),
      ),
      ctx.state.status.meshes.map((m) =>
        h(
          "li",
          { class: "list-item", testid: "recipient", "data-name": `everyone:${m.slug}`, onclick: () => choose(`mesh:${m.id}`, "Everyone") },
          h("div", { class: "mesh-icon" }, icon("broadcast")),
          h("div", { class: "main" }, h("div", { class: "title" }, `Everyone in ${m.name}`), h("div", { class: "detail" }, "A broadcast to every member")),
        ),
      ),
    ),
  });
}
