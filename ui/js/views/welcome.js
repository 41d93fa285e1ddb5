// First run: "Just this computer" (the default) or "Sign in to a broker".

import { h, busy } from "../dom.js";
import { icon } from "../icons.js";
import { joinDialog } from "./meshes.js";

export function mount(container, ctx) {
  let choice = "local";
  const name = h("input", {
    class: "input",
    value: ctx.state.defaults.displayName,
    testid: "welcome-display-name",
    placeholder: "Your name in the mesh",
  });
  const cards = {
    local: h(
      "div",
      { class: "choice selected", testid: "choice-local", onclick: () => pick("local") },
      h("span", { class: "pill accent tag" }, "Recommended"),
      h("div", { class: "glyph" }, icon("computer")),
      h("h3", {}, "Just this computer"),
      h(
        "p",
        {},
        "Runs a private broker inside claudemesh. Your Claude Code sessions on this machine see and message each other — nothing leaves it.",
      ),
    ),
    remote: h(
      "div",
      { class: "choice", testid: "choice-remote", onclick: () => pick("remote") },
      h("div", { class: "glyph" }, icon("globe")),
      h("h3", {}, "Sign in to a broker"),
      h("p", {}, "Join your team's broker. You approve this device from one that is already signed in."),
    ),
  };
  function pick(which) {
    choice = which;
    cards.local.classList.toggle("selected", which === "local");
    cards.remote.classList.toggle("selected", which === "remote");
    nameField.hidden = which !== "local";
  }
  const nameField = h(
    "div",
    { class: "field welcome-name" },
    h("label", {}, "Your name in the mesh"),
    name,
    h("span", { class: "hint" }, "Peers see this name next to your messages."),
  );
  const go = h(
    "button",
    {
      class: "btn primary",
      testid: "welcome-continue",
      onclick: (event) =>
        choice === "remote"
          ? ctx.go("signIn")
          : busy(event.currentTarget, async () => {
              await ctx.call("setup_local", { accountName: null, displayName: name.value });
            }),
    },
    "Continue",
  );
  container.appendChild(
    h(
      "div",
      { class: "welcome", testid: "view-welcome" },
      h(
        "div",
        { class: "welcome-inner" },
        h("img", { src: "icon.svg", class: "welcome-logo", alt: "" }),
        h("h1", {}, "Welcome to claudemesh"),
        h(
          "p",
          { class: "lead" },
          "Connect your Claude Code sessions — on this computer or across machines — into one end-to-end encrypted mesh.",
        ),
        h("div", { class: "choices" }, cards.local, cards.remote),
        nameField,
        h("div", { class: "go" }, go),
        h(
          "p",
          { class: "welcome-join" },
          "Got an invite link? ",
          h("button", { class: "link", testid: "welcome-join", onclick: () => joinDialog(ctx, "") }, "Join a mesh with it"),
        ),
      ),
    ),
  );
  return {};
}
