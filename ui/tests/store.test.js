import { test } from "node:test";
import assert from "node:assert/strict";
import { fromSnapshot, reduce, withThread, allPeers, peerConversation } from "../js/store.js";

const snapshot = {
  status: { state: "connected", stateLine: "Connected", account: { name: "alice" }, meshes: [{ id: "m1", name: "acme" }, { id: "m2", name: "beta" }], unread: 0, pendingDevices: [] },
  peers: { m1: [{ name: "zed", memberPubkey: "z" }, { name: "bob", memberPubkey: "b" }] },
  signIn: null,
  settings: {},
  defaultDisplayName: "alice@box",
  defaultAccountName: "alice",
};

test("status and peers events replace what they describe and keep the rest", () => {
  const state = fromSnapshot(snapshot);
  const next = reduce(state, { type: "peers", meshId: "m2", peers: [{ name: "carol", memberPubkey: "c" }] });
  assert.equal(next.peers.m1, state.peers.m1, "other meshes are untouched");
  assert.deepEqual(allPeers(next).map((p) => `${p.meshName}/${p.name}`), ["acme/bob", "acme/zed", "beta/carol"]);
  const status = reduce(next, { type: "status", state: "reconnecting", stateLine: "Reconnecting…", account: null, meshes: [], unread: 2, pendingDevices: [] });
  assert.equal(status.status.stateLine, "Reconnecting…");
  assert.equal(status.status.type, undefined, "the event tag is not part of the state");
  assert.equal(state.status.stateLine, "Connected", "the old state is not changed");
});

test("messages land in loaded threads in time order and delivery updates their state", () => {
  const key = peerConversation("m1", "b");
  let state = withThread(fromSnapshot(snapshot), key, [{ id: "a", conversation: key, at: 10 }]);
  state = reduce(state, { type: "message", id: "c", conversation: key, at: 30, delivery: { state: "queued" } });
  state = reduce(state, { type: "message", id: "b", conversation: key, at: 20 });
  assert.deepEqual(state.threads[key].map((m) => m.id), ["a", "b", "c"]);
  assert.equal(state.conversationsVersion, 2);
  state = reduce(state, { type: "delivery", id: "c", conversation: key, delivery: { state: "delivered", delivered: 1, recipients: 1 } });
  assert.equal(state.threads[key][2].delivery.state, "delivered");
  const other = reduce(state, { type: "message", id: "x", conversation: "mesh:m1", at: 5 });
  assert.equal(other.threads["mesh:m1"], undefined, "threads that are not open are loaded on demand");
  assert.equal(other.conversationsVersion, 3, "but the list knows something changed");
});

test("a board event moves the board's version and nothing else", () => {
  const state = fromSnapshot({ status: { meshes: [] }, peers: {}, settings: {} });
  const next = reduce(state, { type: "board", meshId: "m1" });
  assert.equal(next.boardVersion, state.boardVersion + 1);
  assert.equal(next.peers, state.peers);
  assert.equal(reduce(next, { type: "board", meshId: "m2" }).boardVersion, state.boardVersion + 2);
});
