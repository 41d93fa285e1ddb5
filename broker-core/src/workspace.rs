//! Shared state and memory entries, sealed by members' clients with the mesh's content keys
//! ([`crate::meshkey`]): the broker stores, orders and routes them and reads none of them.
//!
//! An entry's plaintext carries its body (a state entry's name and JSON value, a memory's text
//! and tags), its writer's member key, the time, and the writer's signature over all of it. It
//! is sealed with XChaCha20-Poly1305 under a key derived from the epoch's key, with associated
//! data naming the kind, the mesh, the entry's id (a state entry's blinded name, a memory's id),
//! its version and its epoch. So the broker can neither forge an author, move an entry to
//! another name, nor pass an old version off as a newer one.
//!
//! State names reach the broker blinded: HMAC-SHA-256 under a names key derived from the mesh's
//! first epoch key, which every member holds (all history) and which stays the same across
//! epochs, so an entry keeps its id when the key moves on. No I/O.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{self, Keypair};
use crate::meshkey::EpochKey;

/// What an entry is: part of the id its seal binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    State,
    Memory,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::State => "state",
            Kind::Memory => "memory",
        }
    }
}

/// Where an entry sits: what its seal's associated data binds.
#[derive(Debug, Clone, Copy)]
pub struct Address<'a> {
    pub kind: Kind,
    pub mesh_id: &'a str,
    /// A state entry's blinded name, a memory's id.
    pub id: &'a str,
    pub version: u64,
    pub epoch: u64,
}

impl Address<'_> {
    fn associated_data(&self) -> String {
        format!(
            "claudemesh-entry/v1|{}|{}|{}|{}|{}",
            self.kind.as_str(),
            self.mesh_id,
            self.id,
            self.version,
            self.epoch
        )
    }

    /// What the writer signs: the address, who, when, and the body's SHA-256.
    fn signed_bytes(&self, writer: &str, at: u64, body: &str) -> String {
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{}|{writer}|{at}|{digest}", self.associated_data())
    }
}

/// A sealed entry as it travels and as the broker keeps it (base64, like every box).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

/// An entry opened: its body, and who wrote it when (as the writer signed).
#[derive(Debug, Clone, PartialEq)]
pub struct Opened<T> {
    pub body: T,
    /// The writer's member key.
    pub writer: String,
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("the entry does not open with the mesh key of its epoch, at its place")]
    DoesNotOpen,
    #[error("the entry's writer signature does not verify")]
    BadSignature,
    #[error("the entry's content is malformed")]
    Malformed,
}

/// The plaintext inside a seal. The body is kept as the exact JSON text the writer signed.
#[derive(Serialize, Deserialize)]
struct Plaintext {
    writer: String,
    at: u64,
    signature: String,
    body: String,
}

type HmacSha256 = Hmac<Sha256>;

fn keyed_hash(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The key entries of an epoch are sealed with (never the epoch key itself, which only wraps).
fn entry_key(epoch_key: &EpochKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(keyed_hash(epoch_key, b"claudemesh-entries/v1"))
}

/// The key that blinds the mesh's state names, from its first epoch's key.
pub fn names_key(mesh_id: &str, first_epoch_key: &EpochKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(keyed_hash(first_epoch_key, format!("claudemesh-state-names/v1|{mesh_id}").as_bytes()))
}

/// A state name as the broker sees it: 64 hex characters it cannot reverse.
pub fn blind_name(names_key: &[u8; 32], name: &str) -> String {
    hex::encode(keyed_hash(names_key, name.as_bytes()))
}

/// Seals `body` at `address`, signed by `writer` at `at` (ms).
pub fn seal<T: Serialize>(key: &EpochKey, address: &Address, body: &T, writer: &Keypair, at: u64) -> Sealed {
    let body = serde_json::to_string(body).expect("an entry body serializes");
    let writer_key = writer.public_hex();
    let signature = writer.sign_hex(address.signed_bytes(&writer_key, at, &body).as_bytes());
    let plaintext = serde_json::to_vec(&Plaintext { writer: writer_key, at, signature, body })
        .expect("an entry plaintext serializes");
    let nonce = crypto::random_bytes::<24>();
    let aad = address.associated_data();
    let ciphertext = XChaCha20Poly1305::new((&*entry_key(key)).into())
        .encrypt((&nonce).into(), Payload { msg: &plaintext, aad: aad.as_bytes() })
        .expect("XChaCha20-Poly1305 sealing cannot fail");
    Sealed { nonce: crypto::b64_encode(&nonce), ciphertext: crypto::b64_encode(&ciphertext) }
}

/// Opens an entry the broker says sits at `address`, and checks its writer's signature. The
/// caller still checks that the writer was a verified member of the mesh.
pub fn open<T: DeserializeOwned>(key: &EpochKey, address: &Address, sealed: &Sealed) -> Result<Opened<T>, EntryError> {
    let nonce: [u8; 24] =
        crypto::b64_decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or(EntryError::DoesNotOpen)?;
    let ciphertext = crypto::b64_decode(&sealed.ciphertext).map_err(|_| EntryError::DoesNotOpen)?;
    let aad = address.associated_data();
    let plaintext = Zeroizing::new(
        XChaCha20Poly1305::new((&*entry_key(key)).into())
            .decrypt((&nonce).into(), Payload { msg: &ciphertext, aad: aad.as_bytes() })
            .map_err(|_| EntryError::DoesNotOpen)?,
    );
    let plain: Plaintext = serde_json::from_slice(&plaintext).map_err(|_| EntryError::Malformed)?;
    crypto::verify_signed(
        &plain.writer,
        address.signed_bytes(&plain.writer, plain.at, &plain.body).as_bytes(),
        &plain.signature,
    )
    .map_err(|_| EntryError::BadSignature)?;
    let body = serde_json::from_str(&plain.body).map_err(|_| EntryError::Malformed)?;
    Ok(Opened { body, writer: plain.writer, at: plain.at })
}

/// A shared-state entry's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateBody {
    pub name: String,
    pub value: serde_json::Value,
}

/// A memory's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBody {
    pub text: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[cfg(test)]
mod tests;
