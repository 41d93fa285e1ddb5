// Who is online, per mesh, live: name, status, summary, groups, host (this machine or remote),
// working directory, peer type, model and the counters each session reports.

import { h, setChildren, avatar } from "../dom.js";
import { statusPill, shortPath, ago, isoMs, statsLine } from "../format.js";
import { icon } from "../icons.js";
import { peerConversation } from "../store.js";

export function mount(container, ctx, param) {
  let selected = param ?? "all";
  const page = h("div", { class: "page", testid: "view-peers" });
  container.appendChild(page);

  function draw() {
    const { status, peers } = ctx.state;
    if (selected !== "all" && !status.meshes.some((m) => m.id === selected)) selected = "all";
    const meshes = status.meshes;
    const shown = meshes.filter((m) => selected === "all" || m.id === selected);
    const total = meshes.reduce((n, m) => n + (peers[m.id]?.length ?? 0), 0);
    const tabs = h(
      "div",
      { class: "tabs" },
      tab("all", `All · ${total}`),
      meshes.map((m) => tab(m.id, `${m.name} · ${peers[m.id]?.length ?? 0}`)),
    );
    const cards = shown.map((mesh) => meshCard(ctx, mesh, peers[mesh.id] ?? []));
    setChildren(
      page,
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", {}, "Peers"), h("p", { class: "sub" }, "Sessions and people online in your meshes, live.")),
      ),
      meshes.length ? tabs : null,
      meshes.length
        ? cards
        : h(
            "div",
            { class: "card" },
            h(
              "div",
              { class: "empty" },
              h("strong", {}, "No meshes yet"),
              "Create a mesh or join one with an invite link.",
              h("div", { class: "go" }, h("button", { class: "btn primary", onclick: () => ctx.go("meshes") }, "Go to Meshes")),
            ),
          ),
    );
  }

  function tab(id, label) {
    return h(
      "button",
      {
        class: `tab ${selected === id ? "active" : ""}`,
        testid: `peers-tab-${id}`,
        onclick: () => {
          selected = id;
          draw();
        },
      },
      label,
    );
  }

  draw();
  return {
    update(state, previous) {
      if (state.peers !== previous.peers || state.status.meshes !== previous.status.meshes) draw();
    },
  };
}

function meshCard(ctx, mesh, peers) {
  const connection =
    mesh.connection === "connected"
      ? h("span", { class: "pill ok" }, "connected")
      : h("span", { class: `pill ${mesh.connection === "failed" ? "bad" : "warn"}`, title: mesh.connectionDetail ?? "" }, mesh.connection);
  return h(
    "div",
    { class: "card", testid: `peers-mesh-${mesh.slug}` },
    h(
      "div",
      { class: "card-head" },
      h("h2", {}, mesh.name),
      connection,
      h("span", { class: "meta" }, `you are ${mesh.displayName}`),
      h("div", { class: "actions" }, h("span", { class: "meta" }, `${peers.length} online`)),
    ),
    peers.length
      ? h("ul", { class: "list" }, peers.map((peer) => peerRow(ctx, mesh, peer)))
      : h(
          "div",
          { class: "empty" },
          h("strong", {}, "Nobody else is online"),
          mesh.connection === "connected"
            ? "Register claudemesh with Claude Code in Settings, or invite someone from Meshes."
            : "Waiting for the connection to the broker.",
        ),
  );
}

function peerRow(ctx, mesh, peer) {
  const pill = statusPill(peer.status);
  const local = peer.location === "local";
  const groups = (peer.groups ?? []).map((g) => `@${g.name}${g.role ? ` (${g.role})` : ""}`).join(", ");
  return h(
    "li",
    { class: "list-item", testid: "peer-row", "data-name": peer.name, "data-mesh": mesh.slug },
    avatar(peer.name, peer.status),
    h(
      "div",
      { class: "main" },
      h(
        "div",
        { class: "title" },
        h("span", { testid: "peer-name" }, peer.name),
        h("span", { class: `pill ${pill.cls}` }, pill.label),
        h("span", { class: `pill ${local ? "accent" : ""}` }, local ? "this machine" : "remote"),
        peer.peerType ? h("span", { class: "pill" }, peer.peerType === "ai" ? "AI session" : peer.peerType) : null,
        peer.sameMember ? h("span", { class: "pill" }, "you") : null,
      ),
      peer.summary ? h("div", { class: "peer-summary" }, peer.summary) : null,
      h(
        "div",
        { class: "peer-meta" },
        h("span", { class: "with-icon" }, icon("host", "icon tiny"), peer.host ?? "unknown host"),
        peer.cwd ? h("span", { class: "with-icon mono" }, icon("folder", "icon tiny"), shortPath(peer.cwd)) : null,
        groups ? h("span", {}, groups) : null,
        peer.model ? h("span", {}, peer.model) : null,
        peer.channel ? h("span", {}, `via ${peer.channel}`) : null,
        peer.connectedAt ? h("span", {}, `online since ${ago(isoMs(peer.connectedAt))}`) : null,
      ),
      statsLine(peer.stats) ? h("div", { class: "peer-meta", testid: "peer-stats" }, statsLine(peer.stats)) : null,
    ),
    peer.sameMember
      ? null
      : h(
          "button",
          {
            class: "btn small",
            testid: "peer-message",
            onclick: () => ctx.go("messages", { key: peerConversation(mesh.id, peer.memberPubkey), title: peer.name }),
          },
          "Message",
        ),
  );
}
