//! The plaintext every benchmark message carries, sealed like any user message.
//!
//! `cmbench:<sender>:<seq>:<sent_us>:` then padding up to the requested size. The send time
//! and sequence number ride inside the encryption, so the broker cannot see them and the
//! recipient reads them only after it decrypted the message.

const MAGIC: &str = "cmbench";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sender: u32,
    pub seq: u32,
    /// When the sender called `send`, in µs on [`crate::measure::now_us`].
    pub sent_us: u64,
}

impl Stamp {
    /// The plaintext: the stamp, padded with `.` to at least `size` bytes.
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut text = format!("{MAGIC}:{}:{}:{}:", self.sender, self.seq, self.sent_us).into_bytes();
        if text.len() < size {
            text.resize(size, b'.');
        }
        text
    }

    pub fn decode(plaintext: &[u8]) -> Option<Stamp> {
        let text = std::str::from_utf8(plaintext).ok()?;
        let mut fields = text.splitn(5, ':');
        if fields.next()? != MAGIC {
            return None;
        }
        Some(Stamp {
            sender: fields.next()?.parse().ok()?,
            seq: fields.next()?.parse().ok()?,
            sent_us: fields.next()?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_with_padding() {
        let stamp = Stamp { sender: 17, seq: 999, sent_us: 123_456_789 };
        let plaintext = stamp.encode(256);
        assert_eq!(plaintext.len(), 256);
        assert_eq!(Stamp::decode(&plaintext), Some(stamp));
        assert_eq!(Stamp::decode(&stamp.encode(0)), Some(stamp), "no padding when the stamp is longer");
    }

    #[test]
    fn foreign_plaintexts_are_not_stamps() {
        assert_eq!(Stamp::decode(b"hello"), None);
        assert_eq!(Stamp::decode(b"cmbench:1:x:3:"), None);
        assert_eq!(Stamp::decode(&[0xff, 0xfe]), None);
    }
}
