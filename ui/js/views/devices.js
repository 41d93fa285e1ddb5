// The account's signed-in devices with when each was last seen; revoke one (its live sessions
// are cut at once).

import { h, setChildren, confirmDialog } from "../dom.js";
import { ago, isoMs } from "../format.js";
import { icon } from "../icons.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-devices" });
  const list = h("div", { class: "card" }, h("div", { class: "empty" }, "Loading…"));
  container.appendChild(page);
  setChildren(
    page,
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("h1", {}, "Devices"), h("p", { class: "sub" }, "Every device signed in to your account.")),
      h("div", { class: "actions" }, h("button", { class: "btn", onclick: () => ctx.go("approve") }, "Approve a device…")),
    ),
    list,
  );
  async function load() {
    try {
      draw(await ctx.call("devices"));
    } catch (error) {
      setChildren(list, h("div", { class: "empty" }, h("strong", {}, "Could not load devices"), error.message));
    }
  }
  function draw(devices) {
    const shown = devices.filter((d) => !d.revoked).sort((a, b) => Number(b.current) - Number(a.current) || isoMs(b.lastSeenAt) - isoMs(a.lastSeenAt));
    const revoked = devices.length - shown.length;
    setChildren(
      list,
      h(
        "ul",
        { class: "list" },
        shown.map((device) =>
          h(
            "li",
            { class: "list-item", testid: "device-row", "data-id": device.id, "data-hostname": device.hostname },
            h("div", { class: "device-glyph" }, icon(device.current ? "computer" : "devices")),
            h(
              "div",
              { class: "main" },
              h("div", { class: "title" }, device.hostname, device.current ? h("span", { class: "pill accent" }, "this device") : null),
              h(
                "div",
                { class: "detail" },
                `${device.platform} ${device.arch} · claudemesh ${device.appVersion} · ${device.ip} · last seen ${ago(isoMs(device.lastSeenAt))} · signed in ${new Date(isoMs(device.createdAt)).toLocaleDateString()}`,
              ),
            ),
            device.current
              ? null
              : h("button", { class: "btn small danger", testid: "device-revoke", onclick: () => confirmRevoke(device) }, "Revoke"),
          ),
        ),
      ),
      revoked ? h("div", { class: "card-body muted small" }, `${revoked} revoked device(s) not shown.`) : null,
    );
  }
  function confirmRevoke(device) {
    confirmDialog({
      title: `Revoke ${device.hostname}?`,
      text: "Its sign-in and its member keys stop working now, and its live sessions are closed.",
      label: "Revoke",
      testid: "device-revoke-confirm",
      action: async () => draw(await ctx.call("revoke_device", { deviceId: device.id })),
    });
  }
  load();
  return {};
}
