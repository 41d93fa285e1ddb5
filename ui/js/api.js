// The only module that talks to the Rust side: commands through invoke(), events through
// listen(). Everything else imports `call` and `onEvent` from here.

const tauri = window.__TAURI__;

/** Runs a command; rejects with `{kind, message}` (the app's CommandError). */
export async function call(command, args = {}) {
  try {
    return await tauri.core.invoke(command, args);
  } catch (error) {
    if (error && typeof error === "object" && "kind" in error) throw error;
    throw { kind: "internal", message: String(error) };
  }
}

/** Subscribes to the app's one event stream (`ui-event`); `handler` gets each typed payload. */
export function onEvent(handler) {
  return tauri.event.listen("ui-event", (event) => handler(event.payload));
}
