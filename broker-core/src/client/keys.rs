//! The client's keys and its cache of precomputed boxes: sealing to peers, opening from them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::{self, BoxKey, CryptoError, Keypair, MultiSealed, PublicKey};
use crate::protocol::{Enc, Push};

/// Why an inbound message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sender's key is malformed")]
    BadSenderKey,
    #[error("the sender's session key is not bound to its member key")]
    BadSessionBinding,
    #[error("decryption failed: not sealed to this member or tampered with")]
    Decryption,
    #[error("a multi-recipient message without this member's key")]
    MissingKey,
}

/// A member key and a session key, with one cached [`BoxKey`] per (our key, peer key) pair.
#[derive(Debug)]
pub struct KeyRing {
    pub mesh_id: String,
    pub member: Keypair,
    pub session: Keypair,
    /// Our session key boxed with a peer's key (sealing to peers).
    sealing: Mutex<HashMap<String, BoxKey>>,
    /// Our member key boxed with a sender's key (opening from peers).
    opening: Mutex<HashMap<String, BoxKey>>,
    /// Session bindings already verified: (member key, session key) → the signature that
    /// verified. A binding is a signature over fixed data, so checking it once per sender is
    /// enough; an ed25519 verification per message was most of the cost of opening one.
    bindings: Mutex<HashMap<(String, String), String>>,
}

fn cached(cache: &Mutex<HashMap<String, BoxKey>>, ours: &Keypair, theirs_hex: &str) -> Result<BoxKey, CryptoError> {
    if let Some(key) = cache.lock().expect("key cache lock").get(theirs_hex) {
        return Ok(key.clone());
    }
    let key = BoxKey::new(ours, &PublicKey::from_hex(theirs_hex)?);
    let mut cache = cache.lock().expect("key cache lock");
    if cache.len() > 4096 {
        cache.clear();
    }
    cache.insert(theirs_hex.to_owned(), key.clone());
    Ok(key)
}

impl KeyRing {
    pub fn new(mesh_id: String, member: Keypair, session: Keypair) -> KeyRing {
        KeyRing {
            mesh_id,
            member,
            session,
            sealing: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
            bindings: Mutex::new(HashMap::new()),
        }
    }

    /// `crypto_box` from our session key to `recipient_hex` (normally the recipient's member
    /// key, so any of its sessions can open it).
    pub fn seal_direct(&self, recipient_hex: &str, plaintext: &[u8]) -> Result<(String, String), CryptoError> {
        Ok(cached(&self.sealing, &self.session, recipient_hex)?.seal(plaintext))
    }

    /// One body for several recipient members, the content key wrapped for each. A recipient
    /// whose key is no usable public key is skipped (one bad member must not stop a message to
    /// everyone else) and returned in the second list.
    pub fn seal_multi<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        plaintext: &[u8],
    ) -> (MultiSealed, Vec<String>) {
        let mut keys: Vec<(&str, BoxKey)> = Vec::new();
        let mut unusable = Vec::new();
        for recipient in recipients {
            match cached(&self.sealing, &self.session, recipient) {
                Ok(key) => keys.push((recipient, key)),
                Err(_) => unusable.push(recipient.to_owned()),
            }
        }
        (crypto::seal_multi(plaintext, keys), unusable)
    }

    /// Checks that `member` signed `session` into this mesh, remembering bindings that verified.
    fn verify_binding(&self, member: &str, session: &str, sig: &str) -> Result<(), OpenError> {
        let key = (member.to_owned(), session.to_owned());
        if self.bindings.lock().expect("binding cache lock").get(&key).is_some_and(|known| known == sig) {
            return Ok(());
        }
        let member_key = PublicKey::from_hex(member).map_err(|_| OpenError::BadSenderKey)?;
        crypto::verify_session_binding(&self.mesh_id, &member_key, session, sig)
            .map_err(|_| OpenError::BadSessionBinding)?;
        let mut bindings = self.bindings.lock().expect("binding cache lock");
        if bindings.len() > 4096 {
            bindings.clear();
        }
        bindings.insert(key, sig.to_owned());
        Ok(())
    }

    /// Checks the sender's session binding (when it has one) and opens the payload. Returns
    /// the plaintext and whether the sender's member identity was verified end to end.
    pub fn open(&self, push: &Push) -> Result<(Vec<u8>, bool), OpenError> {
        let verified = match (&push.sender_member_pubkey, &push.sender_session_sig) {
            (Some(member), _) if *member == push.sender_pubkey => true,
            (Some(member), Some(sig)) => {
                self.verify_binding(member, &push.sender_pubkey, sig)?;
                true
            }
            _ => false,
        };
        let enc = push.enc.unwrap_or(if push.key.is_some() { Enc::Multi } else { Enc::Box });
        let plaintext = match enc {
            Enc::Multi => {
                let wrapped = push.key.as_ref().ok_or(OpenError::MissingKey)?;
                let box_key =
                    cached(&self.opening, &self.member, &push.sender_pubkey).map_err(|_| OpenError::BadSenderKey)?;
                crypto::open_multi(&box_key, &wrapped.nonce, &wrapped.ciphertext, &push.nonce, &push.ciphertext)
                    .map_err(|_| OpenError::Decryption)?
            }
            Enc::Box | Enc::System => {
                let by_member =
                    cached(&self.opening, &self.member, &push.sender_pubkey).map_err(|_| OpenError::BadSenderKey)?;
                match by_member.open(&push.nonce, &push.ciphertext) {
                    Ok(plaintext) => plaintext,
                    // A reference client seals to the session key it saw in peers_list.
                    Err(_) => BoxKey::new(
                        &self.session,
                        &PublicKey::from_hex(&push.sender_pubkey).map_err(|_| OpenError::BadSenderKey)?,
                    )
                    .open(&push.nonce, &push.ciphertext)
                    .map_err(|_| OpenError::Decryption)?,
                }
            }
        };
        Ok((plaintext, verified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_binding_is_remembered_and_a_different_signature_is_checked_again() {
        let (member, session, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
        let ring = KeyRing::new("mesh_1".into(), Keypair::generate(), Keypair::generate());
        let (member_hex, session_hex) = (member.public_hex(), session.public_hex());
        let sig = crypto::sign_session_binding(&member, "mesh_1", &session_hex);
        assert_eq!(ring.verify_binding(&member_hex, &session_hex, &sig), Ok(()));
        assert_eq!(ring.verify_binding(&member_hex, &session_hex, &sig), Ok(()), "from the cache");

        // Another member's signature over the same session key does not bind it to `member`.
        let forged = crypto::sign_session_binding(&other, "mesh_1", &session_hex);
        assert_eq!(ring.verify_binding(&member_hex, &session_hex, &forged), Err(OpenError::BadSessionBinding));
        // A binding signed for another mesh does not hold here.
        let elsewhere = crypto::sign_session_binding(&member, "mesh_2", &session_hex);
        assert_eq!(ring.verify_binding(&member_hex, &session_hex, &elsewhere), Err(OpenError::BadSessionBinding));
        assert_eq!(ring.verify_binding(&member_hex, &session_hex, &sig), Ok(()), "the good one still holds");
    }
}
