//! Identities, signatures and sealing, compatible with libsodium bit for bit.
//!
//! No I/O. Secret material is zeroized on drop (ed25519-dalek and crypto_box do it for their
//! key types; our own buffers use `Zeroizing`). The broker only ever *verifies* here: it never
//! calls an `open_*` function, because it holds no member or session secret key.

mod audit;
mod sealing;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand::RngCore as _;
use zeroize::Zeroizing;

pub use audit::{AUDIT_GENESIS, audit_hash, audit_hashed_text, canonical_json};
pub use sealing::{
    BoxKey, MultiSealed, NONCE_LEN, open_multi, seal_multi, sealed_box_open, sealed_box_seal, secretbox_open,
    secretbox_seal,
};

/// Errors of parsing keys and checking signatures or ciphertexts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("malformed key: expected 64 lowercase hex chars")]
    MalformedKey,
    #[error("malformed signature: expected 128 hex chars")]
    MalformedSignature,
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed base64")]
    MalformedBase64,
    #[error("malformed nonce: expected 24 bytes")]
    MalformedNonce,
    #[error("decryption failed")]
    DecryptionFailed,
}

/// Standard base64 with padding, the wire encoding of nonces and ciphertexts.
pub fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn b64_decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|_| CryptoError::MalformedBase64)
}

/// `n` random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// An ed25519 public key, parsed from its 64-hex wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses a key. Refused: small-order ("weak") points, for which anyone could sign and
    /// every box would be readable, and non-canonical encodings, so one key has one spelling
    /// (keys are compared as strings everywhere).
    pub fn from_hex(hex_text: &str) -> Result<PublicKey, CryptoError> {
        if !crate::protocol::is_key_hex(hex_text) {
            return Err(CryptoError::MalformedKey);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut bytes).map_err(|_| CryptoError::MalformedKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| CryptoError::MalformedKey)?;
        if key.is_weak() || key.to_edwards().compress().to_bytes() != bytes {
            return Err(CryptoError::MalformedKey);
        }
        Ok(PublicKey(key))
    }

    /// Whether `hex_text` is a usable member or session key (see [`PublicKey::from_hex`]).
    pub fn is_valid_hex(hex_text: &str) -> bool {
        PublicKey::from_hex(hex_text).is_ok()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Verifies a detached signature given as hex, strictly (RFC 8032 canonical encodings only,
    /// so one message has exactly one valid signature string).
    pub fn verify_hex(&self, message: &[u8], signature_hex: &str) -> Result<(), CryptoError> {
        let signature = parse_signature(signature_hex)?;
        self.0.verify_strict(message, &signature).map_err(|_| CryptoError::BadSignature)
    }

    /// The X25519 public key libsodium's `crypto_sign_ed25519_pk_to_curve25519` derives.
    pub fn to_x25519(&self) -> crypto_box::PublicKey {
        crypto_box::PublicKey::from(self.0.to_montgomery().to_bytes())
    }
}

/// Checks a signature (hex) over `message` by the key spelled `pubkey_hex`, as signed statements
/// arrive on the wire: a malformed key and a bad signature are both a refusal.
pub fn verify_signed(pubkey_hex: &str, message: &[u8], signature_hex: &str) -> Result<(), CryptoError> {
    PublicKey::from_hex(pubkey_hex)?.verify_hex(message, signature_hex)
}

fn parse_signature(signature_hex: &str) -> Result<ed25519_dalek::Signature, CryptoError> {
    if !crate::protocol::is_signature_hex(signature_hex) {
        return Err(CryptoError::MalformedSignature);
    }
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|_| CryptoError::MalformedSignature)?;
    Ok(ed25519_dalek::Signature::from_bytes(&bytes))
}

/// An ed25519 keypair: a member's long-term identity or a process's session key.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair").field("public", &self.public_hex()).finish_non_exhaustive()
    }
}

impl Keypair {
    pub fn generate() -> Keypair {
        Keypair::from_seed(&Zeroizing::new(random_bytes::<32>()))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Keypair {
        Keypair { signing: SigningKey::from_bytes(seed) }
    }

    /// Parses a secret key stored as hex: a 32-byte seed (64 hex) or libsodium's 64-byte
    /// `seed‖pk` form (128 hex), whose public half must match.
    pub fn from_secret_hex(secret_hex: &str) -> Result<Keypair, CryptoError> {
        let bytes = Zeroizing::new(hex::decode(secret_hex.trim()).map_err(|_| CryptoError::MalformedKey)?);
        let seed: [u8; 32] = bytes.get(..32).and_then(|s| s.try_into().ok()).ok_or(CryptoError::MalformedKey)?;
        let keypair = Keypair::from_seed(&seed);
        match bytes.len() {
            32 => Ok(keypair),
            64 if bytes[32..] == keypair.signing.verifying_key().to_bytes() => Ok(keypair),
            _ => Err(CryptoError::MalformedKey),
        }
    }

    /// The 32-byte seed as hex, for storage in a keychain or an owner-only file.
    pub fn seed_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.signing.to_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    pub fn public_hex(&self) -> String {
        self.public().to_hex()
    }

    /// A detached ed25519 signature as 128 lowercase hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).to_bytes())
    }

    /// The X25519 secret libsodium's `crypto_sign_ed25519_sk_to_curve25519` derives (up to
    /// clamping, which X25519 applies anyway).
    pub fn to_x25519(&self) -> crypto_box::SecretKey {
        crypto_box::SecretKey::from(self.signing.to_scalar_bytes())
    }
}

/// The exact bytes a `hello` signature covers: `meshId|memberId|pubkey|timestamp`.
pub fn hello_signed_bytes(mesh_id: &str, member_id: &str, pubkey_hex: &str, timestamp_ms: u64) -> String {
    format!("{mesh_id}|{member_id}|{pubkey_hex}|{timestamp_ms}")
}

pub fn sign_hello(member: &Keypair, mesh_id: &str, member_id: &str, timestamp_ms: u64) -> String {
    member.sign_hex(hello_signed_bytes(mesh_id, member_id, &member.public_hex(), timestamp_ms).as_bytes())
}

/// The bytes a `hello_v2` signature covers: the v1 fields plus the session key and the announced
/// capabilities, so nobody on the path can swap the session key or strip a capability.
/// The capabilities are written as a JSON array, so no two lists give the same bytes.
pub fn hello_v2_signed_bytes(
    mesh_id: &str,
    member_id: &str,
    pubkey_hex: &str,
    session_pubkey_hex: &str,
    capabilities: &[String],
    timestamp_ms: u64,
) -> String {
    let capabilities = serde_json::to_string(capabilities).expect("a list of strings serialises");
    format!("claudemesh-hello/v2|{mesh_id}|{member_id}|{pubkey_hex}|{session_pubkey_hex}|{capabilities}|{timestamp_ms}")
}

/// The bytes a joining key signs to prove it is held by the joiner (`POST /join`'s `proof`):
/// nobody can register a key they merely saw, such as another member's session key.
pub fn join_proof_bytes(invite_id: &str, mesh_id: &str, pubkey_hex: &str) -> String {
    format!("claudemesh-join/v1|{invite_id}|{mesh_id}|{pubkey_hex}")
}

/// The bytes a device's confirmation key signs for a request that needs a fresh confirmation
/// (revoking another device, minting a login token, approving a device): the request, the device
/// and the time, so a signature confirms exactly one request and nothing else.
pub fn confirmation_bytes(method: &str, path: &str, device_id: &str, timestamp_ms: u64) -> String {
    format!("claudemesh-confirm/v1|{method}|{path}|{device_id}|{timestamp_ms}")
}

/// The `Claudemesh-Confirmation` header value for a request: `<timestampMs>.<signature hex>`.
pub fn confirmation_header(key: &Keypair, method: &str, path: &str, device_id: &str, timestamp_ms: u64) -> String {
    let signature = key.sign_hex(confirmation_bytes(method, path, device_id, timestamp_ms).as_bytes());
    format!("{timestamp_ms}.{signature}")
}

/// The bytes a member signs to delegate a session key to itself (`hello.sessionSig`).
/// It carries no timestamp: it is a standing statement that peers can check later too.
pub fn session_binding_bytes(mesh_id: &str, member_pubkey_hex: &str, session_pubkey_hex: &str) -> String {
    format!("claudemesh-session/v1|{mesh_id}|{member_pubkey_hex}|{session_pubkey_hex}")
}

pub fn sign_session_binding(member: &Keypair, mesh_id: &str, session_pubkey_hex: &str) -> String {
    member.sign_hex(session_binding_bytes(mesh_id, &member.public_hex(), session_pubkey_hex).as_bytes())
}

/// The bytes a session key signs in `hello.sessionProof`, proving the connecting process holds
/// it (the delegation alone says nothing about who holds the secret).
pub fn session_proof_bytes(
    mesh_id: &str,
    member_id: &str,
    member_pubkey_hex: &str,
    session_pubkey_hex: &str,
    timestamp_ms: u64,
) -> String {
    format!("claudemesh-session-proof/v1|{mesh_id}|{member_id}|{member_pubkey_hex}|{session_pubkey_hex}|{timestamp_ms}")
}

/// Checks that `session_sig` is `member`'s signature delegating `session_pubkey` in `mesh_id`.
pub fn verify_session_binding(
    mesh_id: &str,
    member: &PublicKey,
    session_pubkey_hex: &str,
    session_sig: &str,
) -> Result<(), CryptoError> {
    member.verify_hex(session_binding_bytes(mesh_id, &member.to_hex(), session_pubkey_hex).as_bytes(), session_sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Little-endian bytes of `y + offset`, where offset is 0 or p = 2^255 - 19.
    fn encoding(y: u8, plus_p: bool) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        if plus_p {
            // p + y, with y < 19: p is ed ff … ff 7f.
            bytes = [0xff; 32];
            bytes[31] = 0x7f;
            bytes[0] = 0xed + y;
        } else {
            bytes[0] = y;
        }
        bytes
    }

    #[test]
    fn a_key_has_one_spelling_and_no_small_order_points() {
        let mut non_canonical = 0;
        for y in 2..19u8 {
            let (canonical, other) = (encoding(y, false), encoding(y, true));
            let Ok(point) = VerifyingKey::from_bytes(&canonical) else { continue };
            if point.is_weak() {
                assert!(PublicKey::from_hex(&hex::encode(canonical)).is_err(), "y = {y} is of small order");
                continue;
            }
            assert!(PublicKey::is_valid_hex(&hex::encode(canonical)), "y = {y}");
            if VerifyingKey::from_bytes(&other).is_ok() {
                non_canonical += 1;
                assert!(!PublicKey::is_valid_hex(&hex::encode(other)), "y = p + {y} must be refused");
            }
        }
        assert!(non_canonical > 0, "the decoder accepted no non-canonical encoding to test against");
        // The identity (y = 1) and a point of order 2 (y = -1) sign for anyone.
        assert!(!PublicKey::is_valid_hex(&hex::encode(encoding(1, false))));
        assert!(!PublicKey::is_valid_hex(&format!("ec{}7f", "ff".repeat(30))));
        assert!(PublicKey::is_valid_hex(&Keypair::generate().public_hex()));
    }
}
