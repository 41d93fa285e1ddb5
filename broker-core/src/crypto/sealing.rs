//! `crypto_box`, `crypto_secretbox`, sealed boxes, and our multi-recipient envelope.
//!
//! Multi-recipient (`enc: "multi"`, used for `@group` and `*`): the plaintext is sealed once with
//! `crypto_secretbox` under a random 32-byte content key K; `K ‖ SHA-256(nonce ‖ body)` is
//! `crypto_box`ed from the sender's key to each recipient member's key. The digest binds each wrap
//! to its body: a recipient who learnt K cannot pair the sender's genuine wraps with a body of its
//! own. The broker stores one body and one 80-byte wrap per recipient and can open neither.

use std::sync::Arc;

use crypto_box::SalsaBox;
use crypto_box::aead::{Aead, KeyInit};
use xsalsa20poly1305::XSalsa20Poly1305;
use zeroize::Zeroizing;

use super::{CryptoError, Keypair, PublicKey, b64_decode, b64_encode, random_bytes};

/// Length of every nonce here (XSalsa20).
pub const NONCE_LEN: usize = 24;

fn nonce_from_b64(nonce_b64: &str) -> Result<[u8; NONCE_LEN], CryptoError> {
    b64_decode(nonce_b64)?.try_into().map_err(|_| CryptoError::MalformedNonce)
}

/// A `crypto_box` precomputed between one of our secret keys and one peer's public key
/// (libsodium's `crypto_box_beforenm`). Building it costs an X25519 multiplication; sealing and
/// opening with it are cheap, so callers cache one per peer.
#[derive(Clone)]
pub struct BoxKey(Arc<SalsaBox>);

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxKey(..)")
    }
}

impl BoxKey {
    pub fn new(ours: &Keypair, theirs: &PublicKey) -> BoxKey {
        BoxKey(Arc::new(SalsaBox::new(&theirs.to_x25519(), &ours.to_x25519())))
    }

    /// `crypto_box_easy` with the given nonce: returns the 16-byte MAC followed by the ciphertext.
    pub fn seal_with_nonce(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        self.0.encrypt(nonce.into(), plaintext).expect("xsalsa20poly1305 encryption cannot fail")
    }

    /// Seals with a fresh random nonce; returns `(nonce_b64, ciphertext_b64)` as on the wire.
    pub fn seal(&self, plaintext: &[u8]) -> (String, String) {
        let nonce = random_bytes::<NONCE_LEN>();
        (b64_encode(&nonce), b64_encode(&self.seal_with_nonce(&nonce, plaintext)))
    }

    pub fn open(&self, nonce_b64: &str, ciphertext_b64: &str) -> Result<Vec<u8>, CryptoError> {
        let nonce = nonce_from_b64(nonce_b64)?;
        let ciphertext = b64_decode(ciphertext_b64)?;
        self.0.decrypt((&nonce).into(), ciphertext.as_slice()).map_err(|_| CryptoError::DecryptionFailed)
    }
}

/// `crypto_secretbox_easy`: MAC followed by ciphertext.
pub fn secretbox_seal(key: &[u8; 32], nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    XSalsa20Poly1305::new(key.into()).encrypt(nonce.into(), plaintext).expect("xsalsa20poly1305 encryption cannot fail")
}

pub fn secretbox_open(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    XSalsa20Poly1305::new(key.into()).decrypt(nonce.into(), ciphertext).map_err(|_| CryptoError::DecryptionFailed)
}

/// `crypto_box_seal`: an anonymous box to `recipient` (ephemeral sender key, random).
pub fn sealed_box_seal(recipient: &PublicKey, plaintext: &[u8]) -> Vec<u8> {
    recipient.to_x25519().seal(&mut rand::rngs::OsRng, plaintext).expect("sealed box encryption cannot fail")
}

pub fn sealed_box_open(recipient: &Keypair, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    recipient.to_x25519().unseal(sealed).map_err(|_| CryptoError::DecryptionFailed)
}

/// A multi-recipient envelope ready for a `send` frame.
#[derive(Debug, Clone)]
pub struct MultiSealed {
    /// base64 nonce of the body.
    pub nonce: String,
    /// base64 `crypto_secretbox` of the plaintext under the content key.
    pub ciphertext: String,
    /// `(recipient member key hex, wrap nonce b64, wrapped content key b64)` per recipient.
    pub keys: Vec<crate::protocol::KeyWrap>,
}

/// Seals `plaintext` once and wraps the content key for each recipient, given as its member key
/// hex and the (usually cached) [`BoxKey`] between the sender's key and that member's key.
pub fn seal_multi<'a>(plaintext: &[u8], recipients: impl IntoIterator<Item = (&'a str, BoxKey)>) -> MultiSealed {
    let content_key = Zeroizing::new(random_bytes::<32>());
    let nonce = random_bytes::<NONCE_LEN>();
    let body = secretbox_seal(&content_key, &nonce, plaintext);
    let mut wrapped_key = Zeroizing::new([0u8; 64]);
    wrapped_key[..32].copy_from_slice(content_key.as_slice());
    wrapped_key[32..].copy_from_slice(&body_digest(&nonce, &body));
    let keys = recipients
        .into_iter()
        .map(|(to, box_key)| {
            let (wrap_nonce, wrapped) = box_key.seal(wrapped_key.as_slice());
            crate::protocol::KeyWrap { to: to.to_owned(), nonce: wrap_nonce, ciphertext: wrapped }
        })
        .collect();
    MultiSealed { nonce: b64_encode(&nonce), ciphertext: b64_encode(&body), keys }
}

/// SHA-256 of a body's nonce and ciphertext, sealed next to its content key.
fn body_digest(nonce: &[u8; NONCE_LEN], body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(nonce);
    hasher.update(body);
    hasher.finalize().into()
}

/// Opens a multi-recipient envelope: unwraps the content key with `box_key` (between our key and
/// the sender's), checks that the wrap was made for this very body, then opens the body.
pub fn open_multi(
    box_key: &BoxKey,
    key_nonce_b64: &str,
    wrapped_key_b64: &str,
    nonce_b64: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, CryptoError> {
    let unwrapped = Zeroizing::new(box_key.open(key_nonce_b64, wrapped_key_b64)?);
    if unwrapped.len() != 64 {
        return Err(CryptoError::DecryptionFailed);
    }
    let content_key: Zeroizing<[u8; 32]> =
        Zeroizing::new(unwrapped[..32].try_into().map_err(|_| CryptoError::DecryptionFailed)?);
    let nonce = nonce_from_b64(nonce_b64)?;
    let body = b64_decode(ciphertext_b64)?;
    if unwrapped[32..] != body_digest(&nonce, &body) {
        return Err(CryptoError::DecryptionFailed);
    }
    secretbox_open(&content_key, &nonce, &body)
}
