//! Every known-answer vector of `vectors/crypto.json` (made with libsodium) reproduced bit for bit.

use broker_core::crypto::{
    BoxKey, Keypair, PublicKey, audit_hash, b64_decode, b64_encode, canonical_json, hello_signed_bytes, open_multi,
    seal_multi, sealed_box_open, sealed_box_seal, secretbox_open, secretbox_seal, sign_hello,
};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("vectors/crypto.json")).expect("vectors parse")
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    let mut node = value;
    for key in path {
        node = &node[*key];
    }
    node.as_str().unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn identity(vectors: &Value, name: &str) -> Keypair {
    let seed: [u8; 32] =
        hex::decode(text(vectors, &["identities", name, "ed25519_seed"])).expect("hex").try_into().expect("32 bytes");
    Keypair::from_seed(&seed)
}

#[test]
fn identities_derive_libsodium_keys() {
    let v = vectors();
    for name in ["alice", "bob"] {
        let keypair = identity(&v, name);
        assert_eq!(keypair.public_hex(), text(&v, &["identities", name, "ed25519_pk"]));
        // The libsodium 64-byte secret key form parses to the same identity.
        let from_libsodium =
            Keypair::from_secret_hex(text(&v, &["identities", name, "ed25519_sk_libsodium64"])).expect("parses");
        assert_eq!(from_libsodium.public_hex(), keypair.public_hex());
        assert_eq!(hex::encode(keypair.public().to_x25519().as_bytes()), text(&v, &["identities", name, "x25519_pk"]));
        // The secret differs from libsodium's only by clamping: compare the derived public key.
        let x25519_sk = crypto_box::SecretKey::from(
            <[u8; 32]>::try_from(hex::decode(text(&v, &["identities", name, "x25519_sk"])).expect("hex")).expect("32"),
        );
        assert_eq!(keypair.to_x25519().public_key(), x25519_sk.public_key());
    }
}

#[test]
fn libsodium_secret_with_wrong_public_half_is_refused() {
    let v = vectors();
    let alice_sk = text(&v, &["identities", "alice", "ed25519_sk_libsodium64"]);
    let bob_pk = text(&v, &["identities", "bob", "ed25519_pk"]);
    assert!(Keypair::from_secret_hex(&format!("{}{}", &alice_sk[..64], bob_pk)).is_err());
}

#[test]
fn hello_signature_matches() {
    let v = vectors();
    let h = &v["hello_signature"];
    let alice = identity(&v, "alice");
    let ts = h["timestamp_ms"].as_u64().expect("timestamp");
    let bytes = hello_signed_bytes(text(h, &["mesh_id"]), text(h, &["member_id"]), text(h, &["pubkey"]), ts);
    assert_eq!(bytes, text(h, &["signed_bytes_utf8"]));
    let signature = sign_hello(&alice, text(h, &["mesh_id"]), text(h, &["member_id"]), ts);
    assert_eq!(signature, text(h, &["expected_signature_hex"]));
    PublicKey::from_hex(text(h, &["pubkey"])).expect("key").verify_hex(bytes.as_bytes(), &signature).expect("verifies");
}

#[test]
fn crypto_box_matches_and_opens() {
    let v = vectors();
    let alice = identity(&v, "alice");
    let bob = identity(&v, "bob");
    let nonce: [u8; 24] = b64_decode(text(&v, &["crypto_box", "nonce_b64"])).expect("b64").try_into().expect("24");
    let plaintext = text(&v, &["crypto_box", "plaintext_utf8"]);
    let sealed = BoxKey::new(&alice, &bob.public()).seal_with_nonce(&nonce, plaintext.as_bytes());
    assert_eq!(b64_encode(&sealed), text(&v, &["crypto_box", "expected_ciphertext_b64"]));
    let opened = BoxKey::new(&bob, &alice.public())
        .open(text(&v, &["crypto_box", "nonce_b64"]), text(&v, &["crypto_box", "expected_ciphertext_b64"]))
        .expect("opens");
    assert_eq!(opened, plaintext.as_bytes());
}

#[test]
fn tampered_crypto_box_fails() {
    let v = vectors();
    let t = &v["crypto_box_tampered"];
    let result = BoxKey::new(&identity(&v, "bob"), &identity(&v, "alice").public())
        .open(text(t, &["nonce_b64"]), text(t, &["ciphertext_b64"]));
    assert!(result.is_err());
}

#[test]
fn secretbox_matches_and_opens() {
    let v = vectors();
    let s = &v["crypto_secretbox"];
    let key: [u8; 32] = hex::decode(text(s, &["key_hex"])).expect("hex").try_into().expect("32");
    let nonce: [u8; 24] = b64_decode(text(s, &["nonce_b64"])).expect("b64").try_into().expect("24");
    let sealed = secretbox_seal(&key, &nonce, text(s, &["plaintext_utf8"]).as_bytes());
    assert_eq!(b64_encode(&sealed), text(s, &["expected_ciphertext_b64"]));
    assert_eq!(secretbox_open(&key, &nonce, &sealed).expect("opens"), text(s, &["plaintext_utf8"]).as_bytes());
    let mut tampered = sealed.clone();
    tampered[0] ^= 1;
    assert!(secretbox_open(&key, &nonce, &tampered).is_err());
}

#[test]
fn sealed_box_from_libsodium_opens() {
    let v = vectors();
    let s = &v["crypto_box_seal"];
    let bob = identity(&v, "bob");
    let opened = sealed_box_open(&bob, &b64_decode(text(s, &["sealed_b64"])).expect("b64")).expect("opens");
    assert_eq!(opened, text(s, &["expected_plaintext_utf8"]).as_bytes());
    // And ours round-trips, and does not open for someone else.
    let sealed = sealed_box_seal(&bob.public(), b"root");
    assert_eq!(sealed_box_open(&bob, &sealed).expect("opens"), b"root");
    assert!(sealed_box_open(&identity(&v, "alice"), &sealed).is_err());
}

#[test]
fn audit_chain_matches() {
    let v = vectors();
    let entries = v["audit_chain"]["entries"].as_array().expect("entries");
    let mut prev = broker_core::crypto::AUDIT_GENESIS.to_owned();
    for entry in entries {
        assert_eq!(prev, text(entry, &["prev_hash"]));
        let payload = &entry["payload"];
        let hashed = text(entry, &["hashed_string"]);
        assert!(hashed.contains(&canonical_json(payload)), "canonical json of {payload}");
        let hash = audit_hash(
            &prev,
            text(entry, &["mesh_id"]),
            text(entry, &["event_type"]),
            entry["actor"].as_str(),
            payload,
            text(entry, &["created_at"]),
        );
        assert_eq!(hash, text(entry, &["expected_hash"]));
        prev = hash;
    }
}

#[test]
fn multi_recipient_envelope_opens_only_for_its_recipients() {
    let sender = Keypair::generate();
    let (carol, dave, eve) = (Keypair::generate(), Keypair::generate(), Keypair::generate());
    let recipients = [(carol.public_hex(), &carol), (dave.public_hex(), &dave)];
    let sealed = seal_multi(
        "to the group".as_bytes(),
        recipients.iter().map(|(hex, kp)| (hex.as_str(), BoxKey::new(&sender, &kp.public()))),
    );
    assert_eq!(sealed.keys.len(), 2);
    for (wrap, (_, recipient)) in sealed.keys.iter().zip(recipients.iter()) {
        let box_key = BoxKey::new(recipient, &sender.public());
        let opened = open_multi(&box_key, &wrap.nonce, &wrap.ciphertext, &sealed.nonce, &sealed.ciphertext)
            .expect("recipient opens");
        assert_eq!(opened, b"to the group");
    }
    let wrap = &sealed.keys[0];
    let outsider = BoxKey::new(&eve, &sender.public());
    assert!(open_multi(&outsider, &wrap.nonce, &wrap.ciphertext, &sealed.nonce, &sealed.ciphertext).is_err());
}

#[test]
fn a_recipient_cannot_pair_the_senders_wraps_with_a_body_of_its_own() {
    let sender = Keypair::generate();
    let (carol, dave) = (Keypair::generate(), Keypair::generate());
    let recipients = [(carol.public_hex(), &carol), (dave.public_hex(), &dave)];
    let sealed = seal_multi(
        b"the real message",
        recipients.iter().map(|(hex, kp)| (hex.as_str(), BoxKey::new(&sender, &kp.public()))),
    );
    // Carol learns the content key from her wrap…
    let carol_box = BoxKey::new(&carol, &sender.public());
    let unwrapped = carol_box.open(&sealed.keys[0].nonce, &sealed.keys[0].ciphertext).expect("carol's wrap");
    let content_key: [u8; 32] = unwrapped[..32].try_into().expect("32 bytes");
    // …and forges a body under it, paired with the sender's genuine wrap for dave.
    let nonce = [9u8; 24];
    let forged = secretbox_seal(&content_key, &nonce, b"a forged message");
    let dave_box = BoxKey::new(&dave, &sender.public());
    let wrap = &sealed.keys[1];
    let result = open_multi(&dave_box, &wrap.nonce, &wrap.ciphertext, &b64_encode(&nonce), &b64_encode(&forged));
    assert!(result.is_err(), "the wrap is bound to the original body");
    assert_eq!(
        open_multi(&dave_box, &wrap.nonce, &wrap.ciphertext, &sealed.nonce, &sealed.ciphertext).expect("genuine"),
        b"the real message"
    );
}
