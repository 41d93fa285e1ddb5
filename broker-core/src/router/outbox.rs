//! The router's handle on one connection's outgoing frames.

use std::sync::atomic::{AtomicUsize, Ordering};
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
/// The buffer is bounded in frames and in bytes. Durable pushes never fill it on their own (the
/// router keeps at most a delivery window of them unacknowledged), so a full buffer means the
/// peer stopped reading (or keeps asking for replies it does not read): the connection is
/// closed and the peer reconnects to receive its unacknowledged messages again.
#[derive(Debug, Clone)]
pub struct Outbox {
    frames: mpsc::Sender<String>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    closing: CancellationToken,
    /// The close frame the writer task sends when `closing` fires.
    close_frame: Arc<Mutex<Option<(u16, String)>>>,
}

/// The writer task's end of an [`Outbox`].
#[derive(Debug)]
pub struct OutboxReceiver {
    frames: mpsc::Receiver<String>,
    queued_bytes: Arc<AtomicUsize>,
}

impl OutboxReceiver {
    pub async fn recv(&mut self) -> Option<String> {
        let frame = self.frames.recv().await?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Option<String> {
        let frame = self.frames.try_recv().ok()?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }
}

impl Outbox {
    /// An outbox holding at most `max_frames` frames and `max_bytes` bytes (one frame larger
    /// than that still goes through an empty outbox), and the receiving end its connection's
    /// writer task drains.
    pub fn new(max_frames: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (frames, receiver) = mpsc::channel(max_frames.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox {
            frames,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
            closing: CancellationToken::new(),
            close_frame: Arc::new(Mutex::new(None)),
        };
        (outbox, OutboxReceiver { frames: receiver, queued_bytes })
    }

    pub fn send(&self, frame: String) -> Result<(), OutboxError> {
        if self.closing.is_cancelled() {
            return Err(OutboxError::Closed);
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(self.slow_consumer());
        }
        match self.frames.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                Err(self.slow_consumer())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                Err(OutboxError::Closed)
            }
        }
    }

    fn slow_consumer(&self) -> OutboxError {
        self.close(close_code::TRY_AGAIN_LATER, "slow consumer: read your socket faster, then reconnect");
        OutboxError::Full
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
        let (outbox, _receiver) = Outbox::new(1, 1024);
        assert_eq!(outbox.send("a".into()), Ok(()));
        assert_eq!(outbox.send("b".into()), Err(OutboxError::Full));
        assert!(outbox.is_closing());
        assert_eq!(outbox.close_frame().map(|f| f.0), Some(close_code::TRY_AGAIN_LATER));
        assert_eq!(outbox.send("c".into()), Err(OutboxError::Closed));
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes_too() {
        let (outbox, mut receiver) = Outbox::new(100, 10);
        // One frame larger than the budget still goes through an empty outbox…
        assert_eq!(outbox.send("x".repeat(20)), Ok(()));
        assert_eq!(receiver.try_recv().map(|f| f.len()), Some(20));
        // …but frames beyond the budget close the connection, however few they are.
        assert_eq!(outbox.send("x".repeat(6)), Ok(()));
        assert_eq!(outbox.send("x".repeat(4)), Ok(()));
        assert_eq!(outbox.send("x".into()), Err(OutboxError::Full));
        assert_eq!(outbox.close_frame().map(|f| f.0), Some(close_code::TRY_AGAIN_LATER));
    }

    #[test]
    fn the_first_close_reason_wins() {
        let (outbox, _receiver) = Outbox::new(4, 1024);
        outbox.close(close_code::GOING_AWAY, "shutting down");
        outbox.close(close_code::POLICY, "later");
        assert_eq!(outbox.close_frame(), Some((close_code::GOING_AWAY, "shutting down".into())));
    }
}
