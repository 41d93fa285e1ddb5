import { test } from "node:test";
import assert from "node:assert/strict";
import { ago, initials, deliveryLabel, statusPill, stateDot, shortPath, isoMs, statsLine, scheduleLine, stateValue } from "../js/format.js";

test("relative times read naturally", () => {
  const now = 1_000_000_000;
  assert.equal(ago(now - 10_000, now), "just now");
  assert.equal(ago(now - 5 * 60_000, now), "5 min ago");
  assert.equal(ago(now - 3 * 3_600_000, now), "3 h ago");
  assert.equal(ago(now - 26 * 3_600_000, now), "yesterday");
  assert.equal(ago(now - 72 * 3_600_000, now), "3 days ago");
  assert.equal(isoMs("not a date"), 0);
});

test("initials come from the first two words of a name", () => {
  assert.equal(initials("alice@laptop"), "AL");
  assert.equal(initials("Bob Smith"), "BS");
  assert.equal(initials("carol"), "CA");
});

test("delivery labels tell queued, delivered and the error", () => {
  assert.equal(deliveryLabel({ state: "queued", delivered: 0, recipients: 1 }), "Queued");
  assert.equal(deliveryLabel({ state: "queued", delivered: 1, recipients: 3 }), "Delivered to 1 of 3");
  assert.equal(deliveryLabel({ state: "delivered", delivered: 1, recipients: 1 }), "Delivered");
  assert.equal(deliveryLabel({ state: "error", error: "blocked: no" }), "Not sent: blocked: no");
});

test("status and state map to their colours", () => {
  assert.deepEqual(statusPill("working"), { cls: "warn", label: "working" });
  assert.equal(statusPill("idle").cls, "ok");
  assert.equal(stateDot("connected"), "ok");
  assert.equal(stateDot("expired"), "bad");
  assert.equal(shortPath("/home/alice/src/app"), "~/src/app");
});

test("a peer's counters read in one line, errors only when there are some", () => {
  const stats = { messagesIn: 3, messagesOut: 1, toolCalls: 1, uptime: 30, errors: 0 };
  assert.equal(statsLine(stats), "3 in · 1 out · 1 tool call · up <1 min");
  assert.equal(statsLine({ ...stats, toolCalls: 12, uptime: 7200, errors: 2 }), "3 in · 1 out · 12 tool calls · up 2 h · 2 errors");
  assert.equal(statsLine({ ...stats, uptime: 600 }), "3 in · 1 out · 1 tool call · up 10 min");
  assert.equal(statsLine(undefined), "");
  assert.equal(statsLine({ ...stats, uptime: 0 }), "", "nothing reported yet");
});

test("a schedule's line says when it fires next, how it recurs and how often it fired", () => {
  const once = { nextFireAt: "2026-12-01T08:00:00.000Z", fired: 0 };
  assert.match(scheduleLine(once, "en-GB"), /^next 1 Dec 2026, \d\d:00$/);
  const weekly = { ...once, cron: "0 9 * * 1-5", tz: "Europe/Berlin", fired: 3 };
  assert.match(scheduleLine(weekly, "en-GB"), / · every 0 9 \* \* 1-5 \(Europe\/Berlin\) · fired 3×$/);
  assert.match(scheduleLine({ ...weekly, tz: undefined }, "en-GB"), /\(UTC\)/);
});

test("a state value shows text as is, other JSON compact, long ones cut", () => {
  assert.equal(stateValue("reviewing #42"), "reviewing #42");
  assert.equal(stateValue({ owner: "alice", until: 5 }), '{"owner":"alice","until":5}');
  assert.equal(stateValue(null), "null");
  const long = stateValue("x".repeat(500), 10);
  assert.equal(long, "xxxxxxxxx…");
});
