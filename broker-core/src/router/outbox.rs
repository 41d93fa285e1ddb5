//! The router's handle on one connection's outgoing frames.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// WebSocket close codes the broker uses.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The broker is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy violation: a refused handshake, a revoked member.
    pub const POLICY: u16 = 1008;
    /// Try again later: the session fell too far behind reading its socket.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxError {
    /// The buffer is full: the connection is being closed as a slow consumer.
    Full,
    /// The connection is already closing.
    Closed,
}

/// Sends text frames to one connection's writer task, or closes it.
///
/// The buffer is bounded. Durable pushes never fill it on their own (the router keeps at most
/// a delivery window of them unacknowledged), so a full buffer means the peer stopped reading:
/// the connection is closed and the peer reconnects to receive its unacknowledged messages again.
#[derive(Debug, Clone)]
pub struct Outbox {
    frames: mpsc::Sender<String>,
    closing: CancellationToken,
    /// The close frame the writer task sends when `closing` fires.
    close_frame: Arc<Mutex<Option<(u16, String)>>>,
}

impl Outbox {
    /// An outbox and the receiving end its connection's writer task drains.
    pub fn new(capacity: usize) -> (Outbox, mpsc::Receiver<String>) {
        let (frames, receiver) = mpsc::channel(capacity.max(1));
        let outbox = Outbox { frames, closing: CancellationToken::new(), close_frame: Arc::new(Mutex::new(None)) };
        (outbox, receiver)
    }

    pub fn send(&self, frame: String) -> Result<(), OutboxError> {
        if self.closing.is_cancelled() {
            return Err(OutboxError::Closed);
        }
        match self.frames.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(close_code::TRY_AGAIN_LATER, "slow consumer: read your socket faster, then reconnect");
                Err(OutboxError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Closed),
        }
    }

    /// Asks the connection to close with `code`; the first reason given wins.
    pub fn close(&self, code: u16, reason: &str) {
        let mut frame = self.close_frame.lock().expect("close frame lock");
        if frame.is_none() {
            *frame = Some((code, reason.to_owned()));
        }
        drop(frame);
        self.closing.cancel();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Resolves once [`Outbox::close`] was called.
    pub async fn closed(&self) {
        self.closing.cancelled().await;
    }

    /// The code and reason [`Outbox::close`] was called with.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.lock().expect("close frame lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_closes_the_connection_as_a_slow_consumer() {
        let (outbox, _receiver) = Outbox::new(1);
        assert_eq!(outbox.send("a".into()), Ok(()));
        assert_eq!(outbox.send("b".into()), Err(OutboxError::Full));
        assert!(outbox.is_closing());
        assert_eq!(outbox.close_frame().map(|f| f.0), Some(close_code::TRY_AGAIN_LATER));
        assert_eq!(outbox.send("c".into()), Err(OutboxError::Closed));
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (outbox, _receiver) = Outbox::new(4);
        outbox.close(close_code::GOING_AWAY, "shutting down");
        outbox.close(close_code::POLICY, "later");
        assert_eq!(outbox.close_frame(), Some((close_code::GOING_AWAY, "shutting down".into())));
    }
}
