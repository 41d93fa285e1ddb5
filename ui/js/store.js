// The window's state and how events change it. Pure: no DOM, no invoke (tested with node --test).

/** The state right after the snapshot the app sends at load. */
export function fromSnapshot(snapshot) {
  return {
    status: snapshot.status,
    peers: snapshot.peers ?? {},
    signIn: snapshot.signIn ?? null,
    settings: snapshot.settings,
    defaults: {
      displayName: snapshot.defaultDisplayName,
      accountName: snapshot.defaultAccountName,
    },
    // The open conversation's messages (loaded on demand), by conversation key.
    threads: {},
    conversationsVersion: 0,
    // Counts shared-state changes: the Board reads the state again when it moves.
    boardVersion: 0,
  };
}

/** Applies one `ui-event` payload; returns the new state (the old one is not changed). */
export function reduce(state, event) {
  switch (event.type) {
    case "status":
      return { ...state, status: stripType(event) };
    case "peers":
      return { ...state, peers: { ...state.peers, [event.meshId]: event.peers } };
    case "signIn":
      return { ...state, signIn: stripType(event) };
    case "message": {
      const message = stripType(event);
      const thread = state.threads[message.conversation];
      const threads = thread
        ? { ...state.threads, [message.conversation]: upsert(thread, message) }
        : state.threads;
      return { ...state, threads, conversationsVersion: state.conversationsVersion + 1 };
    }
    case "delivery": {
      const thread = state.threads[event.conversation];
      if (!thread) return state;
      const updated = thread.map((m) => (m.id === event.id ? { ...m, delivery: event.delivery } : m));
      return { ...state, threads: { ...state.threads, [event.conversation]: updated } };
    }
    case "board":
      return { ...state, boardVersion: state.boardVersion + 1 };
    default:
      return state;
  }
}

/** Loaded history for one conversation. */
export function withThread(state, key, messages) {
  return { ...state, threads: { ...state.threads, [key]: messages } };
}

function stripType(event) {
  const { type: _type, ...rest } = event;
  return rest;
}

function upsert(thread, message) {
  const index = thread.findIndex((m) => m.id === message.id);
  if (index >= 0) {
    const copy = thread.slice();
    copy[index] = message;
    return copy;
  }
  return [...thread, message].sort((a, b) => a.at - b.at);
}

/** All online peers, with their mesh, sorted by mesh then name. */
export function allPeers(state) {
  const rows = [];
  for (const mesh of state.status.meshes) {
    for (const peer of state.peers[mesh.id] ?? []) rows.push({ ...peer, meshId: mesh.id, meshName: mesh.name });
  }
  return rows.sort((a, b) => a.meshName.localeCompare(b.meshName) || a.name.localeCompare(b.name));
}

/** The conversation key for talking to a peer (per member, per mesh). */
export function peerConversation(meshId, memberPubkey) {
  return `peer:${meshId}:${memberPubkey}`;
}
