// Sign in to a broker with a device login: the code to approve (big, and as a QR code of the
// complete verification URI), live status, retry; or a pasted one-time login token.

import { h, setChildren, svg, busy } from "../dom.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-signin" });
  container.appendChild(page);
  let timer = null;

  function draw() {
    clearInterval(timer);
    const state = ctx.state;
    if (state.status.account) {
      setChildren(page, head("Account"), signedIn(ctx, state.status));
      return;
    }
    const view = state.signIn;
    if (!view) {
      setChildren(page, head("Sign in to a broker", "Approve this device from one that is already signed in."), form(ctx));
      return;
    }
    setChildren(page, head("Sign in to a broker", view.brokerUrl), code(ctx, view));
    if (view.phase === "waiting") {
      timer = setInterval(() => {
        const left = page.querySelector("[data-testid=signin-countdown]");
        if (left) left.textContent = countdown(view.expiresAt);
      }, 1000);
    }
  }
  draw();
  return {
    update(state, previous) {
      if (state.signIn !== previous.signIn || state.status.account !== previous.status.account) draw();
    },
  };
}

function head(title, sub) {
  return h("div", { class: "page-head" }, h("div", {}, h("h1", {}, title), sub ? h("p", { class: "sub" }, sub) : null));
}

function countdown(expiresAt) {
  const seconds = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")} left`;
}

function form(ctx) {
  const broker = h("input", {
    class: "input",
    testid: "signin-broker",
    placeholder: "http://mesh.example.com:7900",
    value: ctx.state.settings.brokerUrl ?? "",
  });
  const account = h("input", { class: "input", testid: "signin-account", placeholder: "optional" });
  const name = h("input", { class: "input", testid: "signin-name", value: ctx.state.defaults.displayName });
  const token = h("textarea", { class: "input mono", rows: 3, testid: "signin-token", placeholder: "cml_…" });
  const start = h(
    "button",
    {
      class: "btn primary",
      testid: "signin-start",
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          const view = await ctx.call("start_sign_in", {
            brokerUrl: broker.value,
            accountName: account.value || null,
            displayName: name.value || null,
          });
          ctx.setState({ ...ctx.state, signIn: view });
        }),
    },
    "Get a sign-in code",
  );
  const useToken = h(
    "button",
    {
      class: "btn",
      testid: "signin-token-submit",
      onclick: (event) =>
        busy(event.currentTarget, () =>
          ctx.call("sign_in_with_token", {
            brokerUrl: broker.value,
            loginToken: token.value,
            displayName: name.value || null,
          }),
        ),
    },
    "Sign in with this token",
  );
  return h(
    "div",
    { class: "card" },
    h(
      "div",
      { class: "card-body" },
      h("div", { class: "field" }, h("label", {}, "Broker address"), broker),
      h(
        "div",
        { class: "grid-2" },
        h(
          "div",
          { class: "field" },
          h("label", {}, "Account"),
          account,
          h("span", { class: "hint" }, "Name it and its signed-in devices are notified of this request."),
        ),
        h("div", { class: "field" }, h("label", {}, "Your name in meshes"), name),
      ),
      h("div", { class: "row" }, start, h("button", { class: "btn ghost", onclick: () => ctx.go("welcome") }, "Back")),
      h(
        "details",
        { class: "more" },
        h("summary", {}, "Paste a login token instead"),
        h(
          "p",
          { class: "muted small" },
          "On a signed-in device run ",
          h("code", {}, "claudemesh device token"),
          " and paste what it prints. It works once, for ten minutes.",
        ),
        h("div", { class: "field" }, token),
        useToken,
      ),
    ),
  );
}

function code(ctx, view) {
  const phases = {
    waiting: [h("span", { class: "spinner" }), "Waiting for approval…"],
    approved: [h("span", { class: "dot ok" }), "Approved — signing in"],
    denied: [h("span", { class: "dot bad" }), view.message ?? "Denied"],
    expired: [h("span", { class: "dot bad" }), "The code expired before anyone approved it"],
    failed: [h("span", { class: "dot bad" }), view.message ?? "The sign-in failed"],
  };
  const retry = h(
    "button",
    {
      class: "btn primary",
      testid: "signin-retry",
      onclick: async () => {
        await ctx.call("cancel_sign_in");
        ctx.setState({ ...ctx.state, signIn: null });
      },
    },
    "Try again",
  );
  const cancel = h(
    "button",
    {
      class: "btn",
      testid: "signin-cancel",
      onclick: async () => {
        await ctx.call("cancel_sign_in");
        ctx.setState({ ...ctx.state, signIn: null });
      },
    },
    "Cancel",
  );
  return h(
    "div",
    { class: "card" },
    h(
      "div",
      { class: "card-body signin" },
      h(
        "div",
        {},
        h("div", { class: "muted" }, "On a signed-in device, approve this code:"),
        h("div", { class: "user-code selectable", testid: "signin-user-code" }, view.userCode),
        h(
          "div",
          { class: "status-line", testid: "signin-phase", "data-phase": view.phase },
          phases[view.phase] ?? view.phase,
          view.phase === "waiting" ? h("span", { class: "muted small", testid: "signin-countdown" }, countdown(view.expiresAt)) : null,
        ),
        h(
          "p",
          { class: "muted small" },
          "In the claudemesh app: Approve a device…. From a terminal: ",
          h("code", {}, `claudemesh device approve ${view.userCode}`),
          ". Or scan the code to open ",
          h("span", { class: "selectable" }, view.verificationUri),
          ".",
        ),
        h("div", { class: "row" }, view.phase === "waiting" ? cancel : retry),
      ),
      svg(view.qrSvg),
    ),
  );
}

function signedIn(ctx, status) {
  const expired = status.state === "expired";
  return h(
    "div",
    {},
    expired
      ? h("div", { class: "banner bad" }, "This device's sign-in expired or was revoked. Sign out, then sign in again.")
      : null,
    h(
      "div",
      { class: "card" },
      h(
        "div",
        { class: "card-body" },
        h(
          "dl",
          { class: "kv" },
          h("dt", {}, "Account"),
          h("dd", {}, status.account.name),
          h("dt", {}, "Broker"),
          h("dd", { class: "selectable" }, status.account.local ? `${status.account.brokerUrl} (this computer)` : status.account.brokerUrl),
          h("dt", {}, "State"),
          h("dd", {}, status.stateLine),
        ),
        h(
          "div",
          { class: "row spaced" },
          h(
            "button",
            {
              class: "btn danger",
              testid: "sign-out",
              onclick: (event) => busy(event.currentTarget, () => ctx.call("sign_out")),
            },
            "Sign out",
          ),
        ),
      ),
    ),
  );
}
