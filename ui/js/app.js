// The window: loads the app's snapshot, keeps the state up to date from `ui-event`s, and shows
// one view at a time. Views are modules with `setChildren(container, ctx)` returning `{update}`.

import { call, onEvent } from "./api.js";
import { fromSnapshot, reduce } from "./store.js";
import { h, setChildren, showError } from "./dom.js";
import { stateDot } from "./format.js";
import { icon } from "./icons.js";
import * as welcome from "./views/welcome.js";
import * as signin from "./views/signin.js";
import * as peers from "./views/peers.js";
import * as messages from "./views/messages.js";
import * as meshes from "./views/meshes.js";
import * as devices from "./views/devices.js";
import * as approve from "./views/approve.js";
import * as settings from "./views/settings.js";
import * as scheduled from "./views/scheduled.js";
import * as board from "./views/board.js";
import * as memory from "./views/memory.js";

const VIEWS = { welcome, signIn: signin, peers, messages, meshes, scheduled, board, memory, devices, approve, settings };
/** Views that work without an account. */
const SIGNED_OUT_VIEWS = new Set(["welcome", "signIn", "settings"]);

let state = null;
let current = { name: null, param: null, view: null };
const listeners = new Set();

const ctx = {
  get state() {
    return state;
  },
  call,
  go,
  setState(next) {
    const previous = state;
    state = next;
    renderChrome();
    current.view?.update?.(state, previous);
    for (const listener of listeners) listener(state, previous);
  },
};

/** Signed in, or at least in a mesh joined by invite: the app's views have something to show. */
function signedIn() {
  return Boolean(state?.status.account) || (state?.status.meshes.length ?? 0) > 0;
}

/** Shows `name` (with an optional parameter: a mesh id, a conversation key, a code…). */
function go(name, param = null) {
  if (!VIEWS[name]) return;
  if (!signedIn() && !SIGNED_OUT_VIEWS.has(name)) {
    name = state?.signIn?.phase === "waiting" ? "signIn" : "welcome";
    param = null;
  }
  const content = document.getElementById("content");
  current = { name, param, view: null };
  content.replaceChildren();
  content.dataset.view = name;
  current.view = VIEWS[name].mount(content, ctx, param);
  renderChrome();
}

function renderChrome() {
  if (!state) return;
  const status = state.status;
  const fullscreen = current.name === "welcome" || (!signedIn() && current.name === "signIn");
  document.getElementById("sidebar").hidden = fullscreen;

  const line = document.getElementById("state-line");
  setChildren(line, h("span", { class: `dot ${stateDot(status.state)}` }), h("span", {}, status.stateLine));
  line.dataset.state = status.state;

  for (const item of document.querySelectorAll(".nav-item")) {
    item.classList.toggle("active", item.dataset.view === current.name);
    item.disabled = !signedIn() && !SIGNED_OUT_VIEWS.has(item.dataset.view);
  }
  const unread = document.getElementById("unread-badge");
  unread.hidden = status.unread === 0;
  unread.textContent = String(status.unread);
  const pending = document.getElementById("pending-badge");
  pending.hidden = status.pendingDevices.length === 0;
  pending.textContent = String(status.pendingDevices.length);

  const foot = document.getElementById("account-foot");
  if (status.account) {
    setChildren(
      foot,
      h("strong", {}, status.account.name),
      status.account.local ? "On this computer's own broker" : status.account.brokerUrl,
    );
  } else {
    setChildren(foot, "Not signed in");
  }
}

async function boot() {
  for (const slot of document.querySelectorAll("[data-icon]")) slot.appendChild(icon(slot.dataset.icon));
  for (const item of document.querySelectorAll(".nav-item")) {
    item.addEventListener("click", () => go(item.dataset.view));
  }
  // Subscribe first so nothing between the snapshot and the subscription is missed; events
  // that arrive before the snapshot wait in the queue.
  const early = [];
  await onEvent((event) => {
    if (!state) {
      early.push(event);
      return;
    }
    handle(event);
  });
  try {
    state = fromSnapshot(await call("snapshot"));
  } catch (error) {
    showError(error);
    return;
  }
  for (const event of early) state = reduce(state, event);
  go(signedIn() ? "peers" : state.signIn?.phase === "waiting" ? "signIn" : "welcome");
}

function handle(event) {
  if (event.type === "navigate") {
    go(event.view, event.param ?? null);
    return;
  }
  const wasSignedIn = signedIn();
  ctx.setState(reduce(state, event));
  // Signing in or out changes which views exist; a new sign-in lands on Peers.
  if (wasSignedIn !== signedIn()) {
    if (!signedIn()) go("welcome");
    else if (current.name === "welcome" || current.name === "signIn") go("peers");
  }
}

window.addEventListener("DOMContentLoaded", boot);
