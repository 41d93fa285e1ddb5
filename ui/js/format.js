// Small pure formatting helpers (tested with node --test).

/** "just now", "5 min ago", "3 h ago", "2 days ago" for a Unix-ms time. */
export function ago(ms, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  return days === 1 ? "yesterday" : `${days} days ago`;
}

/** ISO 8601 → Unix ms (NaN-safe: 0). */
export function isoMs(iso) {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? 0 : ms;
}

/** Clock time for a message bubble. */
export function clock(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** Up to two initials of a display name ("alice@laptop" → "AL", "Bob Smith" → "BS"). */
export function initials(name) {
  const words = String(name ?? "?")
    .split(/[\s@._-]+/)
    .filter(Boolean);
  if (words.length >= 2) return (words[0][0] + words[1][0]).toUpperCase();
  return (words[0] ?? "?").slice(0, 2).toUpperCase();
}

/** A stable, pleasant colour for a name. */
export function colorFor(text) {
  let hash = 0;
  for (const ch of String(text)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const hues = [232, 262, 200, 170, 145, 25, 340, 290, 12, 190];
  return `hsl(${hues[hash % hues.length]} 58% 52%)`;
}

/** What a delivery state says under a sent message. */
export function deliveryLabel(delivery) {
  if (!delivery) return "";
  switch (delivery.state) {
    case "delivered":
      return delivery.recipients > 1 ? `Delivered to ${delivery.recipients}` : "Delivered";
    case "error":
      return `Not sent: ${delivery.error ?? "unknown error"}`;
    default:
      return delivery.recipients > 1 && delivery.delivered > 0
        ? `Delivered to ${delivery.delivered} of ${delivery.recipients}`
        : "Queued";
  }
}

/** Peer status → pill class and label. */
export function statusPill(status) {
  switch (status) {
    case "working":
      return { cls: "warn", label: "working" };
    case "dnd":
      return { cls: "bad", label: "do not disturb" };
    default:
      return { cls: "ok", label: "idle" };
  }
}

/** The header dot for the connection state. */
export function stateDot(state) {
  switch (state) {
    case "connected":
      return "ok";
    case "token_expiring":
    case "awaiting_approval":
    case "reconnecting":
      return "warn";
    case "expired":
      return "bad";
    default:
      return "";
  }
}

/** Shortens a home directory path for display. */
export function shortPath(path) {
  return String(path ?? "").replace(/^\/home\/[^/]+/, "~").replace(/^\/root/, "~");
}

/** A peer's reported counters in one short line ("3 in · 5 out · 12 tool calls · up 1 h"); empty
 * until the session reported any (a report always carries its uptime). */
export function statsLine(stats) {
  if (!stats || stats.uptime === 0) return "";
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  const minutes = Math.floor(stats.uptime / 60);
  const up = minutes < 1 ? "up <1 min" : minutes < 60 ? `up ${minutes} min` : `up ${Math.floor(minutes / 60)} h`;
  const parts = [`${stats.messagesIn} in`, `${stats.messagesOut} out`, plural(stats.toolCalls, "tool call", "tool calls"), up];
  if (stats.errors > 0) parts.push(plural(stats.errors, "error", "errors"));
  return parts.join(" · ");
}

/** A shared-state value as the Board shows it: text as is, anything else as compact JSON, cut
 * at 300 characters. */
export function stateValue(value, limit = 300) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

/** When a schedule fires: "next 01 Dec 2026, 09:00 · every 0 9 * * 1-5 (Europe/Berlin) · fired 3×". */
export function scheduleLine(row, locale = undefined) {
  const next = new Date(isoMs(row.nextFireAt)).toLocaleString(locale, { dateStyle: "medium", timeStyle: "short" });
  const parts = [`next ${next}`];
  if (row.cron) parts.push(`every ${row.cron} (${row.tz ?? "UTC"})`);
  if (row.fired > 0) parts.push(`fired ${row.fired}×`);
  return parts.join(" · ");
}
