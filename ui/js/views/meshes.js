// Meshes: the list with online counts; create; invite (link, QR, email); join by link;
// members with roles, blocking, kick and ban; leave.

import { h, setChildren, svg, busy, dialog, toast, avatar } from "../dom.js";

export function mount(container, ctx, param) {
  const page = h("div", { class: "page", testid: "view-meshes" });
  container.appendChild(page);

  function draw() {
    const { status } = ctx.state;
    setChildren(
      page,
      h(
        "div",
        { class: "page-head" },
        h("div", {}, h("h1", {}, "Meshes"), h("p", { class: "sub" }, "Groups of sessions and people that can reach each other.")),
        h(
          "div",
          { class: "actions" },
          h("button", { class: "btn", testid: "join-open", onclick: () => joinDialog(ctx, "") }, "Join with a link"),
          h("button", { class: "btn primary", testid: "create-open", onclick: () => createDialog(ctx) }, "Create mesh"),
        ),
      ),
      status.meshes.length
        ? h("div", { class: "card" }, h("ul", { class: "list" }, status.meshes.map((m) => meshRow(ctx, m))))
        : h("div", { class: "card" }, h("div", { class: "empty" }, h("strong", {}, "No meshes yet"), "Create one, or join with an invite link.")),
    );
  }
  draw();
  if (typeof param === "string" && param.startsWith("join:")) joinDialog(ctx, param.slice(5));
  return {
    update(state, previous) {
      if (state.status.meshes !== previous.status.meshes) draw();
    },
  };
}

function meshRow(ctx, mesh) {
  const admin = mesh.role === "admin";
  const connection =
    mesh.connection === "connected"
      ? h("span", { class: "pill ok" }, `${mesh.online} online`)
      : h("span", { class: `pill ${mesh.connection === "failed" ? "bad" : "warn"}`, title: mesh.connectionDetail ?? "" }, mesh.connection);
  return h(
    "li",
    { class: "list-item", testid: "mesh-row", "data-slug": mesh.slug, "data-id": mesh.id },
    h("div", { class: "mesh-icon" }, mesh.name.slice(0, 1).toUpperCase()),
    h(
      "div",
      { class: "main" },
      h("div", { class: "title" }, h("span", { testid: "mesh-name" }, mesh.name), connection, h("span", { class: "pill" }, mesh.role)),
      h("div", { class: "detail" }, `${mesh.slug} · you are ${mesh.displayName} · ${mesh.brokerUrl}`),
    ),
    admin ? h("button", { class: "btn small", testid: "invite-open", onclick: () => inviteDialog(ctx, mesh) }, "Invite") : null,
    h("button", { class: "btn small", testid: "members-open", onclick: () => membersDialog(ctx, mesh) }, "Members"),
    h(
      "button",
      {
        class: "btn small ghost danger",
        testid: "leave",
        onclick: () => confirmLeave(ctx, mesh),
      },
      "Leave",
    ),
  );
}

function createDialog(ctx) {
  const name = h("input", { class: "input", testid: "create-name", placeholder: "acme" });
  const create = h(
    "button",
    {
      class: "btn primary",
      testid: "create-submit",
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          await ctx.call("create_mesh", { name: name.value });
          close();
          toast(`Created ${name.value}`);
        }),
    },
    "Create",
  );
  const close = dialog({
    title: "Create a mesh",
    testid: "create-dialog",
    body: h("div", { class: "field" }, h("label", {}, "Name"), name, h("span", { class: "hint" }, "You become its admin and can invite others.")),
    foot: [create],
  });
}

/** The "Join a mesh" dialog (also offered on the first-run screen). */
export function joinDialog(ctx, link) {
  const input = h("textarea", { class: "input mono", rows: 3, testid: "join-link", placeholder: "http://…/join/… or claudemesh://join/…" });
  input.value = link;
  const join = h(
    "button",
    {
      class: "btn primary",
      testid: "join-submit",
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          await ctx.call("join_mesh", { link: input.value, displayName: null });
          close();
          toast("Joined");
        }),
    },
    "Join",
  );
  const close = dialog({
    title: "Join a mesh",
    testid: "join-dialog",
    body: h(
      "div",
      { class: "field" },
      h("label", {}, "Invite link"),
      input,
      h("span", { class: "hint" }, "The link's signature is checked on this computer, and a member key is made here."),
    ),
    foot: [join],
  });
}

function inviteDialog(ctx, mesh) {
  const role = h("select", { class: "input", testid: "invite-role" }, h("option", { value: "member" }, "Member"), h("option", { value: "admin" }, "Admin"));
  const uses = h("input", { class: "input", type: "number", min: 1, value: 1, testid: "invite-uses" });
  const hours = h("select", { class: "input", testid: "invite-expiry" }, [
    h("option", { value: 1 }, "1 hour"),
    h("option", { value: 24 }, "1 day"),
    h("option", { value: 168, selected: true }, "7 days"),
    h("option", { value: 720 }, "30 days"),
  ]);
  const email = h("input", { class: "input", type: "email", placeholder: "optional", testid: "invite-email" });
  const result = h("div", {});
  const create = h(
    "button",
    {
      class: "btn primary",
      testid: "invite-create",
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          const invite = await ctx.call("create_invite", {
            meshId: mesh.id,
            role: role.value,
            maxUses: Number(uses.value) || 1,
            expiresInHours: Number(hours.value),
            email: email.value || null,
          });
          setChildren(result, inviteResult(invite, email.value));
        }),
    },
    "Create invite",
  );
  dialog({
    title: `Invite to ${mesh.name}`,
    testid: "invite-dialog",
    wide: true,
    body: h(
      "div",
      {},
      h(
        "div",
        { class: "grid-2" },
        h("div", { class: "field" }, h("label", {}, "Role"), role),
        h("div", { class: "field" }, h("label", {}, "Uses"), uses),
        h("div", { class: "field" }, h("label", {}, "Expires after"), hours),
        h("div", { class: "field" }, h("label", {}, "Email it to"), email),
      ),
      h("div", { class: "row" }, create),
      result,
    ),
  });
}

function inviteResult(invite, emailTo) {
  const copy = h(
    "button",
    {
      class: "btn small",
      testid: "invite-copy",
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(invite.link);
          toast("Link copied");
        } catch {
          toast("Select the link and copy it", "bad");
        }
      },
    },
    "Copy link",
  );
  const emailNote = emailTo
    ? invite.emailed
      ? h("div", { class: "banner ok" }, `Emailed to ${emailTo}`)
      : h("div", { class: "banner" }, `Not emailed: ${invite.emailError ?? "the broker cannot send email"}`)
    : null;
  return h(
    "div",
    { class: "invite-box", testid: "invite-result" },
    h(
      "div",
      {},
      h("label", { class: "muted small" }, "Invite link"),
      h("code", { class: "link-box selectable", testid: "invite-link" }, invite.link),
      h("div", { class: "row spaced" }, copy, h("span", { class: "muted small" }, `${invite.maxUses} use(s), ${invite.role}, until ${new Date(invite.expiresAt).toLocaleString()}`)),
      emailNote,
    ),
    svg(invite.qrSvg),
  );
}

async function membersDialog(ctx, mesh) {
  const body = h("div", { testid: "members" }, h("div", { class: "empty" }, "Loading…"));
  dialog({ title: `Members of ${mesh.name}`, testid: "members-dialog", wide: true, body });
  async function load() {
    try {
      const view = await ctx.call("members", { meshId: mesh.id });
      setChildren(body, view.note ? h("div", { class: "banner" }, view.note) : null, h("ul", { class: "list" }, view.members.map((m) => memberRow(ctx, mesh, view, m, load))));
    } catch (error) {
      setChildren(body, h("div", { class: "banner bad" }, error.message));
    }
  }
  load();
}

function memberRow(ctx, mesh, view, member, reload) {
  const act = (label, testid, action, cls = "") =>
    h("button", { class: `btn small ${cls}`, testid, onclick: (event) => busy(event.currentTarget, async () => {
      await action();
      await reload();
    }) }, label);
  return h(
    "li",
    { class: "list-item", testid: "member-row", "data-name": member.displayName },
    avatar(member.displayName, member.online ? "idle" : null),
    h(
      "div",
      { class: "main" },
      h(
        "div",
        { class: "title" },
        member.displayName,
        member.role ? h("span", { class: `pill ${member.role === "admin" ? "accent" : ""}` }, member.role) : null,
        member.online ? h("span", { class: "pill ok" }, "online") : h("span", { class: "pill" }, "offline"),
        member.mine ? h("span", { class: "pill" }, "you") : null,
        member.banned ? h("span", { class: "pill bad" }, "banned") : null,
        member.blocked ? h("span", { class: "pill warn" }, "blocked by you") : null,
        admissionPill(member.admission),
      ),
      h("div", { class: "detail mono" }, `${member.pubkey.slice(0, 16)}…${member.joinedAt ? " · joined " + new Date(member.joinedAt).toLocaleDateString() : ""}`),
    ),
    member.mine
      ? null
      : act(member.blocked ? "Allow" : "Block", "member-block", () =>
          ctx.call("set_blocked", { meshId: mesh.id, memberPubkey: member.pubkey, blocked: !member.blocked }),
        ),
    view.canModerate && !member.mine && member.id && !member.banned
      ? act("Kick", "member-kick", () => ctx.call("moderate", { meshId: mesh.id, memberId: member.id, action: "kick" }), "danger")
      : null,
    view.canModerate && !member.mine && member.id
      ? member.banned
        ? act("Unban", "member-unban", () => ctx.call("moderate", { meshId: mesh.id, memberId: member.id, action: "unban" }))
        : act("Ban", "member-ban", () => ctx.call("moderate", { meshId: mesh.id, memberId: member.id, action: "ban" }), "danger")
      : null,
  );
}

// How the member's admission checks out in the mesh's signed membership log (docs/security.md).
function admissionPill(admission) {
  switch (admission) {
    case "verified":
      return h("span", { class: "pill ok", testid: "member-admission", title: "Its admission is signed back to the mesh's creator" }, "verified");
    case "vouched":
      return h("span", { class: "pill warn", testid: "member-admission", title: "Only the broker says it was admitted (a device signed in without an approval from this mesh, or an unban)" }, "vouched");
    case "missing":
      return h("span", { class: "pill bad", testid: "member-admission", title: "The broker lists it, but the membership log never admitted it" }, "not admitted");
    default:
      return null;
  }
}

function confirmLeave(ctx, mesh) {
  const leave = h(
    "button",
    {
      class: "btn primary",
      testid: "leave-confirm",
      onclick: (event) =>
        busy(event.currentTarget, async () => {
          await ctx.call("leave_mesh", { meshId: mesh.id });
          close();
        }),
    },
    `Leave ${mesh.name}`,
  );
  const close = dialog({
    title: `Leave ${mesh.name}?`,
    body: h("p", { class: "muted" }, "This device's member key for the mesh is deleted. You need a new invite to come back."),
    foot: [leave],
  });
}
