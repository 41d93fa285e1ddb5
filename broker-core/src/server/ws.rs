//! One WebSocket connection: the hello phase, then frames until it closes.
//!
//! Two tasks per connection: this one reads and dispatches, a writer task drains the outbox
//! (batching frames into one flush) and sends pings. Neither holds router locks across awaits.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};

use super::Broker;
use crate::protocol::{ClientFrame, ErrorCode, ErrorFrame, ServerFrame};
use crate::router::{Outbox, OutboxReceiver, SessionHandle, close_code};

/// Initial read buffer per connection. tungstenite allocates it up front (128 KiB by default),
/// which would dominate the memory of thousands of idle sessions; it grows when a frame needs it.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes gathered before a write reaches the socket (we flush explicitly after each batch).
/// tungstenite keeps the buffer's largest size for the life of the connection, so this bounds
/// what every idle session holds after its busiest moment (a join storm fills it).
const WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 64;
/// How long a closing connection may take to flush what it still has to say.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

pub(super) async fn upgrade(State(broker): State<Broker>, upgrade: WebSocketUpgrade) -> Response {
    let max_frame = broker.config().max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + max_frame + 1)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| connection(broker, socket))
}

fn error_text(code: ErrorCode, message: &str) -> String {
    serde_json::to_string(&ServerFrame::Error(ErrorFrame { code, message: message.to_owned(), id: None, req_id: None }))
        .expect("error frames serialize")
}

async fn connection(broker: Broker, socket: WebSocket) {
    let config = broker.config().clone();
    let (sink, mut stream) = socket.split();
    let (outbox, frames) = Outbox::new(config.outbox_frames, config.outbox_bytes);
    let writer = tokio::spawn(write_loop(sink, frames, outbox.clone(), config.ping_interval));

    let session = match tokio::time::timeout(config.hello_timeout, hello_phase(&broker, &mut stream, &outbox)).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            let _ = writer.await;
            return;
        }
        Err(_) => {
            broker.metrics().connection_rejected(ErrorCode::NoHello);
            let _ = outbox.send(error_text(ErrorCode::NoHello, "no hello within the handshake timeout"));
            outbox.close(close_code::POLICY, "no_hello");
            let _ = writer.await;
            return;
        }
    };

    let clean = read_loop(&broker, &mut stream, &outbox, &session, config.idle_timeout).await;
    broker.router().goodbye(&session, clean);
    outbox.close(close_code::NORMAL, "bye");
    let _ = writer.await;
    // Dropping a socket with unread input resets it, and the peer would lose the close frame
    // and its reason (a slow consumer's 1013): read what it still sends, briefly.
    let _ = tokio::time::timeout(CLOSE_FLUSH, async { while let Some(Ok(_)) = stream.next().await {} }).await;
}

/// Reads until a valid `hello` was accepted (`Some`) or the connection must end (`None`).
async fn hello_phase(broker: &Broker, stream: &mut SplitStream<WebSocket>, outbox: &Outbox) -> Option<SessionHandle> {
    let refuse = |code: ErrorCode, message: &str| {
        broker.metrics().connection_rejected(code);
        let _ = outbox.send(error_text(code, message));
        outbox.close(close_code::POLICY, code.as_str());
    };
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = outbox.closed() => return None,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                refuse(ErrorCode::Malformed, "frames must be JSON text");
                return None;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                outbox.close(close_code::NORMAL, "bye");
                return None;
            }
        };
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Hello(hello)) => {
                return match broker.router().hello(hello, outbox.clone()).await {
                    Ok(session) => Some(session),
                    Err(refusal) => {
                        let _ = outbox.send(error_text(refusal.code, &refusal.message));
                        outbox.close(close_code::POLICY, refusal.code.as_str());
                        None
                    }
                };
            }
            Ok(_) => {
                let _ = outbox.send(error_text(ErrorCode::NoHello, "send hello first"));
            }
            Err(error) => {
                refuse(ErrorCode::Malformed, &format!("not a valid hello: {}", describe_parse_error(&error)));
                return None;
            }
        }
    }
}

/// Serde's message, without echoing any of the frame's content back.
fn describe_parse_error(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.find(" at line ") {
        Some(index) => text[..index].to_owned(),
        None => text,
    }
}

/// Dispatches frames until the connection ends; returns whether the client closed it cleanly.
async fn read_loop(
    broker: &Broker,
    stream: &mut SplitStream<WebSocket>,
    outbox: &Outbox,
    session: &SessionHandle,
    idle_timeout: Duration,
) -> bool {
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(idle_timeout, stream.next()) => message,
            _ = outbox.closed() => return false,
        };
        let text = match message {
            Err(_) => {
                tracing::debug!(session = session.session_id, "dropping a silent session");
                outbox.close(close_code::GOING_AWAY, "idle timeout");
                return false;
            }
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let _ = outbox.send(error_text(ErrorCode::Malformed, "frames must be JSON text"));
                continue;
            }
            Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Err(_)) | None) => return false,
        };
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(frame) => broker.router().handle(session, frame).await,
            Err(error) => {
                let _ = outbox.send(error_text(ErrorCode::Malformed, &describe_parse_error(&error)));
            }
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: OutboxReceiver,
    outbox: Outbox,
    ping_interval: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => {
                let Some(frame) = frame else { break };
                if !written_unless_stuck(&outbox, write_batch(&mut sink, &mut frames, frame)).await {
                    outbox.close(close_code::NORMAL, "write failed");
                    return;
                }
            }
            _ = outbox.closed() => break,
            _ = ping.tick() => {
                if !written_unless_stuck(&outbox, sink.send(Message::Ping(Default::default()))).await {
                    outbox.close(close_code::NORMAL, "write failed");
                    return;
                }
            }
        }
    }
    // Say what was queued before the close (a refusal's error frame), then close.
    let (code, reason) = outbox.close_frame().unwrap_or((close_code::NORMAL, String::new()));
    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
        while let Some(frame) = frames.try_recv() {
            if sink.feed(Message::Text(Utf8Bytes::from(frame))).await.is_err() {
                return;
            }
        }
        let close = CloseFrame { code, reason: Utf8Bytes::from(reason) };
        let _ = sink.send(Message::Close(Some(close))).await;
    })
    .await;
}

/// Runs one write to the socket; false if it failed or was given up. A peer that stops reading
/// holds a write for as long as its TCP connection lives: once the connection is closing (a slow
/// consumer, an idle session) the write gets `CLOSE_FLUSH` more, then the socket is dropped.
async fn written_unless_stuck(outbox: &Outbox, write: impl Future<Output = Result<(), axum::Error>>) -> bool {
    tokio::pin!(write);
    let written = tokio::select! {
        written = &mut write => written,
        _ = outbox.closed() => match tokio::time::timeout(CLOSE_FLUSH, &mut write).await {
            Ok(written) => written,
            Err(_) => return false,
        },
    };
    written.is_ok()
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    frames: &mut OutboxReceiver,
    first: String,
) -> Result<(), axum::Error> {
    sink.feed(Message::Text(Utf8Bytes::from(first))).await?;
    for _ in 1..WRITE_BATCH {
        match frames.try_recv() {
            Some(frame) => sink.feed(Message::Text(Utf8Bytes::from(frame))).await?,
            None => break,
        }
    }
    sink.flush().await
}
