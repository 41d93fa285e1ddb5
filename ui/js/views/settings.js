// Settings: account, the local broker, notifications per mesh and quiet mode, start at login,
// and the Claude Code integration with this machine's connected sessions.

import { h, setChildren, busy, toggle, toast } from "../dom.js";
import { shortPath } from "../format.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-settings" });
  container.appendChild(page);
  const claudeBox = h("div", { class: "card", testid: "claude-integration" });
  let claude = null;

  async function loadClaude(action) {
    try {
      claude = action === undefined ? await ctx.call("claude_integration") : await ctx.call("register_claude", { register: action });
    } catch (error) {
      claude = { error: error.message };
    }
    drawClaude();
  }

  function drawClaude() {
    if (!claude) return;
    if (claude.error) {
      setChildren(claudeBox, cardHead("Claude Code"), h("div", { class: "card-body banner bad" }, claude.error));
      return;
    }
    const button = h(
      "button",
      {
        class: `btn ${claude.registered ? "" : "primary"}`,
        testid: claude.registered ? "claude-unregister" : "claude-register",
        onclick: (event) => busy(event.currentTarget, () => loadClaude(!claude.registered)),
      },
      claude.registered ? "Unregister" : "Register with Claude Code",
    );
    setChildren(
      claudeBox,
      cardHead("Claude Code", claude.registered ? h("span", { class: "pill ok", testid: "claude-state" }, "registered") : h("span", { class: "pill", testid: "claude-state" }, "not registered")),
      h(
        "div",
        { class: "setting" },
        h(
          "div",
          { class: "text" },
          h("strong", {}, "MCP bridge and status hooks"),
          h("span", {}, claude.registered ? `Each Claude Code session on this computer joins your meshes. (${shortPath(claude.mcpFile)}, ${shortPath(claude.hooksFile)})` : "One click makes every Claude Code session on this computer a peer of your meshes."),
        ),
        button,
      ),
      claude.actions?.length ? h("div", { class: "card-body muted small" }, claude.actions.map((a) => h("div", {}, a))) : null,
      h(
        "div",
        { class: "setting" },
        h(
          "div",
          { class: "text" },
          h("strong", {}, "Sessions on this computer"),
          claude.sessions.length
            ? h("ul", { class: "list", testid: "claude-sessions" }, claude.sessions.map((s) => h("li", { class: "small" }, `${s.name} — ${s.status} — ${shortPath(s.cwd)}`)))
            : h("span", {}, "No Claude Code session is connected right now."),
        ),
      ),
    );
  }

  function draw() {
    const { status, settings } = ctx.state;
    const local = settings.localBroker;
    const view = status.localBroker;
    const enabled = h("input", { type: "checkbox", checked: local.enabled });
    const port = h("input", { class: "input", type: "number", min: 1, max: 65535, value: view.port ?? local.port, testid: "local-port" });
    const dataDir = h("input", { class: "input mono", value: local.dataDir ?? view.dataDir, testid: "local-data-dir" });
    const lan = h("input", { type: "checkbox", checked: local.shareOnLan, testid: "local-lan" });
    const save = h(
      "button",
      {
        class: "btn primary",
        testid: "local-save",
        onclick: (event) =>
          busy(event.currentTarget, async () => {
            await ctx.call("configure_local_broker", {
              change: { enabled: enabled.checked, port: Number(port.value), dataDir: dataDir.value, shareOnLan: lan.checked },
            });
            ctx.setState({ ...ctx.state, settings: await ctx.call("settings") });
            toast("Local broker settings saved");
          }),
      },
      "Apply",
    );
    const runButton = h(
      "button",
      {
        class: "btn",
        testid: view.running ? "local-stop" : "local-start",
        onclick: (event) => busy(event.currentTarget, () => ctx.call("local_broker_running", { run: !view.running })),
      },
      view.running ? "Stop" : "Start",
    );
    const restart = view.running
      ? h(
          "button",
          {
            class: "btn",
            testid: "local-restart",
            onclick: (event) =>
              busy(event.currentTarget, async () => {
                await ctx.call("local_broker_running", { run: false });
                await ctx.call("local_broker_running", { run: true });
              }),
          },
          "Restart",
        )
      : null;
    const brokerState = view.running
      ? h("span", { class: "pill ok", testid: "local-state" }, `running on ${view.url}`)
      : view.error
        ? h("span", { class: "pill bad", testid: "local-state" }, view.error)
        : h("span", { class: "pill", testid: "local-state" }, "stopped");

    const switchRow = (title, detail, control) =>
      h("div", { class: "setting" }, h("div", { class: "text" }, h("strong", {}, title), h("span", {}, detail)), control);

    const notifications = settings.notifications;
    const meshToggles = status.meshes.map((mesh) => {
      const choice = { joins: true, leaves: false, messages: false, ...(notifications.meshes[mesh.id] ?? {}) };
      const set = (key) => async (value) => {
        const next = { ...choice, [key]: value };
        try {
          const saved = await ctx.call("set_mesh_notifications", { meshId: mesh.id, choice: next });
          ctx.setState({ ...ctx.state, settings: saved });
        } catch (error) {
          toast(error.message, "bad");
        }
      };
      return h(
        "div",
        { class: "setting", testid: "mesh-notifications", "data-slug": mesh.slug },
        h("div", { class: "text" }, h("strong", {}, mesh.name), h("span", {}, "Notify me when…")),
        h("span", { class: "small muted" }, "joins"),
        toggle({ checked: choice.joins, onchange: set("joins"), testid: "notify-joins" }),
        h("span", { class: "small muted" }, "leaves"),
        toggle({ checked: choice.leaves, onchange: set("leaves"), testid: "notify-leaves" }),
        h("span", { class: "small muted" }, "messages"),
        toggle({ checked: choice.messages, onchange: set("messages"), testid: "notify-messages" }),
      );
    });

    setChildren(
      page,
      h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Settings"))),
      h(
        "div",
        { class: "card" },
        cardHead("Account"),
        status.account
          ? switchRow(
              `Signed in as ${status.account.name}`,
              status.account.local ? "On this computer's own broker." : status.account.brokerUrl,
              h("button", { class: "btn danger", testid: "sign-out", onclick: (e) => busy(e.currentTarget, () => ctx.call("sign_out")) }, "Sign out"),
            )
          : switchRow("Not signed in", "Sign in to a broker, or run one on this computer.", h("button", { class: "btn primary", onclick: () => ctx.go("welcome") }, "Set up")),
      ),
      h(
        "div",
        { class: "card", testid: "local-broker" },
        cardHead("Local broker", brokerState),
        switchRow("Run a broker on this computer", "Lets your Claude Code sessions here talk without any server.", h("label", { class: "switch" }, enabled, h("span"))),
        switchRow(
          "Share on the local network",
          view.lanUrl ? `Other machines join through ${view.lanUrl}.` : "Off: it listens on 127.0.0.1 only, invisible to other machines.",
          h("label", { class: "switch" }, lan, h("span")),
        ),
        h(
          "div",
          { class: "card-body" },
          h(
            "div",
            { class: "grid-2" },
            h(
              "div",
              { class: "field" },
              h("label", {}, "Port"),
              port,
              h("span", { class: "hint" }, "Your meshes on this broker follow it to a new port."),
            ),
            h(
              "div",
              { class: "field" },
              h("label", {}, "Data directory"),
              dataDir,
              h("span", { class: "hint" }, "Your account and meshes live here; another directory is another, empty broker."),
            ),
          ),
          h("div", { class: "row" }, save, runButton, restart),
        ),
      ),
      h(
        "div",
        { class: "card" },
        cardHead("Notifications"),
        switchRow(
          "Pause notifications",
          "Quiet mode: nothing pops up until you turn this off.",
          toggle({
            checked: notifications.paused,
            testid: "notify-pause",
            onchange: async (value) => {
              const saved = await ctx.call("set_paused", { paused: value });
              ctx.setState({ ...ctx.state, settings: saved });
            },
          }),
        ),
        meshToggles,
      ),
      h(
        "div",
        { class: "card" },
        cardHead("General"),
        switchRow(
          "Start at login",
          "claudemesh starts in the tray when you log in.",
          toggle({
            checked: settings.startAtLogin,
            testid: "start-at-login",
            onchange: async (value) => {
              try {
                ctx.setState({ ...ctx.state, settings: await ctx.call("set_start_at_login", { enabled: value }) });
              } catch (error) {
                toast(error.message, "bad");
              }
            },
          }),
        ),
        switchRow("Quit claudemesh", "Closes every connection and stops the local broker.", h("button", { class: "btn", testid: "quit", onclick: () => ctx.call("quit") }, "Quit")),
      ),
      claudeBox,
    );
    drawClaude();
  }

  draw();
  loadClaude();
  // Settings change elsewhere too (first run, the tray's Pause): start from the app's copy.
  ctx.call("settings").then((settings) => ctx.setState({ ...ctx.state, settings }));
  return {
    update(state, previous) {
      if (state.status.localBroker !== previous.status.localBroker || state.status.account !== previous.status.account || state.settings !== previous.settings) draw();
      if (state.peers !== previous.peers && claude && !claude.error) loadClaude();
    },
  };
}

function cardHead(title, extra = null) {
  return h("div", { class: "card-head" }, h("h2", {}, title), extra);
}
