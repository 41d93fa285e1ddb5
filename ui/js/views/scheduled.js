// Scheduled messages and reminders: the person's own in every mesh (every member's where the
// person is an admin), with who each is for and when it fires next; cancel one. Their text is
// not shown: it was sealed for its recipients when it was scheduled.

import { h, setChildren, confirmDialog, pageHead } from "../dom.js";
import { ago, isoMs, scheduleLine } from "../format.js";
import { icon } from "../icons.js";

export function mount(container, ctx) {
  const page = h("div", { class: "page", testid: "view-scheduled" });
  const list = h("div", { class: "card" }, h("div", { class: "empty" }, "Loading…"));
  container.appendChild(page);
  setChildren(
    page,
    pageHead(
      "Scheduled",
      "Messages and reminders waiting to be sent, sealed when they were scheduled.",
      h("button", { class: "btn", testid: "scheduled-refresh", onclick: () => load() }, "Refresh"),
    ),
    list,
  );

  async function load() {
    try {
      draw(await ctx.call("scheduled"));
    } catch (error) {
      setChildren(list, h("div", { class: "empty" }, h("strong", {}, "Could not load scheduled messages"), error.message));
    }
  }

  function draw(rows) {
    if (!rows.length) {
      setChildren(
        list,
        h(
          "div",
          { class: "empty" },
          h("strong", {}, "Nothing scheduled"),
          "Ask Claude to remind you or a peer later (schedule_reminder), or run claudemesh remind.",
        ),
      );
      return;
    }
    setChildren(
      list,
      h(
        "ul",
        { class: "list" },
        rows.map((row) =>
          h(
            "li",
            { class: "list-item", testid: "scheduled-row", "data-id": row.scheduleId, "data-to": row.to },
            h("div", { class: "device-glyph" }, icon("clock")),
            h(
              "div",
              { class: "main" },
              h(
                "div",
                { class: "title" },
                h("span", {}, `To ${row.to}`),
                h("span", { class: "pill" }, row.mesh),
                row.cron ? h("span", { class: "pill accent" }, "recurring") : null,
              ),
              h("div", { class: "schedule-when", testid: "scheduled-when" }, scheduleLine(row)),
              h(
                "div",
                { class: "detail muted" },
                `by ${row.senderName} · ${row.recipients} recipient(s) · scheduled ${ago(isoMs(row.createdAt))}`,
              ),
            ),
            h("button", { class: "btn small danger", testid: "scheduled-cancel", onclick: () => confirmCancel(row) }, "Cancel"),
          ),
        ),
      ),
    );
  }

  function confirmCancel(row) {
    confirmDialog({
      title: `Cancel the message to ${row.to}?`,
      text: row.cron ? "It will not be sent again." : "It will not be sent.",
      label: "Cancel it",
      testid: "scheduled-cancel-confirm",
      action: async () => draw(await ctx.call("cancel_scheduled", { scheduleId: row.scheduleId })),
    });
  }

  load();
  return {};
}
