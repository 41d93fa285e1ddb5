// Approve a device…: enter the code a signing-in device shows (or arrive with it from a
// `claudemesh://device?code=…` link or a notification), see which device asks, then decide.

import { h, setChildren, busy } from "../dom.js";
import { ago, isoMs } from "../format.js";
import { icon } from "../icons.js";

export function mount(container, ctx, param) {
  const page = h("div", { class: "page", testid: "view-approve" });
  container.appendChild(page);
  const code = h("input", { class: "input code-input", testid: "approve-code", placeholder: "XXXX-XXXX", maxlength: 12 });
  const found = h("div", {});
  const lookup = h(
    "button",
    { class: "btn primary", testid: "approve-lookup", onclick: (event) => busy(event.currentTarget, () => look(code.value)) },
    "Look up",
  );
  code.addEventListener("keydown", (event) => {
    if (event.key === "Enter") lookup.click();
  });
  const pendingBox = h("div", {});

  async function look(userCode) {
    const request = await ctx.call("lookup_device", { userCode });
    setChildren(found, requestCard(request));
  }

  function requestCard(request) {
    const decided = request.status !== "pending";
    const decide = (approve) =>
      h(
        "button",
        {
          class: `btn ${approve ? "primary" : "danger"}`,
          testid: approve ? "approve-yes" : "approve-no",
          onclick: (event) =>
            busy(event.currentTarget, async () => {
              const result = await ctx.call("decide_device", { userCode: request.userCode, approve });
              setChildren(found, requestCard(result));
            }),
        },
        approve ? "Approve" : "Deny",
      );
    const banner = {
      approved: h("div", { class: "banner ok", testid: "approve-result" }, "Approved: the device signs in now."),
      denied: h("div", { class: "banner bad", testid: "approve-result" }, "Denied: the device was told no."),
      consumed: h("div", { class: "banner", testid: "approve-result" }, "Already used: that device signed in."),
    }[request.status];
    return h(
      "div",
      { class: "card", testid: "approve-request" },
      h(
        "div",
        { class: "card-body device-card" },
        h("div", { class: "device-glyph" }, icon("devices")),
        h(
          "div",
          { class: "main grow" },
          h("h2", { class: "device-title" }, request.hostname || "Unnamed device"),
          h(
            "dl",
            { class: "kv" },
            h("dt", {}, "Code"),
            h("dd", { class: "mono" }, request.userCode),
            h("dt", {}, "Platform"),
            h("dd", {}, `${request.platform} ${request.arch} · claudemesh ${request.appVersion}`),
            h("dt", {}, "Asked from"),
            h("dd", { class: "mono" }, request.ip),
            h("dt", {}, "Asked"),
            h("dd", {}, `${new Date(isoMs(request.requestedAt)).toLocaleString()} (${ago(isoMs(request.requestedAt))})`),
          ),
          banner ?? null,
          decided
            ? null
            : h(
                "div",
                { class: "row spaced" },
                decide(true),
                decide(false),
                h("span", { class: "muted small" }, "Approve only a device you are signing in yourself: it will act for your account."),
              ),
        ),
      ),
    );
  }

  function drawPending() {
    const pending = ctx.state.status.pendingDevices;
    setChildren(
      pendingBox,
      pending.length
        ? h(
            "div",
            { class: "card" },
            h("div", { class: "card-head" }, h("h2", {}, "Waiting for you"), h("span", { class: "meta" }, "Devices that named your account: type the code each one shows")),
            h(
              "ul",
              { class: "list" },
              pending.map((p) =>
                h(
                  "li",
                  { class: "list-item", testid: "pending-row" },
                  h("div", { class: "main" }, h("div", { class: "title" }, p.hostname), h("div", { class: "detail" }, `${p.platform} ${p.arch} · ${p.ip} · ${ago(isoMs(p.requestedAt))}`)),
                  h("button", { class: "btn small", onclick: () => code.focus() }, "Enter its code"),
                ),
              ),
            ),
          )
        : null,
    );
  }

  setChildren(
    page,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Approve a device"), h("p", { class: "sub" }, "Enter the code the device shows. You will see which device asks before deciding.")),
    ),
    h("div", { class: "card" }, h("div", { class: "card-body" }, h("div", { class: "row" }, code, lookup))),
    found,
    pendingBox,
  );
  drawPending();
  if (typeof param === "string" && param) {
    // A link (from any web page) only fills the code in: nothing is looked up until the person
    // checks it against the device and clicks, so a page cannot spend the account's wrong-code
    // budget or choose what the person sees.
    code.value = param;
    setChildren(
      found,
      h("p", { class: "sub", testid: "approve-from-link" }, "Opened from a link. Check that the device shows this code, then look it up."),
    );
    lookup.focus();
  }
  return {
    update(state, previous) {
      if (state.status.pendingDevices !== previous.status.pendingDevices) drawPending();
    },
  };
}
