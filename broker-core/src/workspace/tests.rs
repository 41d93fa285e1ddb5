use super::*;

const MESH: &str = "mesh_workspace";

fn address(id: &str, version: u64, epoch: u64) -> Address<'_> {
    Address { kind: Kind::State, mesh_id: MESH, id, version, epoch }
}

fn body(name: &str) -> StateBody {
    StateBody { name: name.into(), value: serde_json::json!({"owner": "alice", "until": 5}) }
}

#[test]
fn an_entry_opens_at_its_address_with_its_writer() {
    let (key, writer) = (meshkey_for_test(1), Keypair::generate());
    let sealed = seal(&key, &address("n1", 3, 1), &body("lock/deploy"), &writer, 42);
    let opened: Opened<StateBody> = open(&key, &address("n1", 3, 1), &sealed).expect("opens");
    assert_eq!(opened.body, body("lock/deploy"));
    assert_eq!((opened.writer.as_str(), opened.at), (writer.public_hex().as_str(), 42));
    assert!(!sealed.ciphertext.contains("lock/deploy"));
}

#[test]
fn the_broker_cannot_move_roll_back_or_rekey_an_entry() {
    let (key, writer) = (meshkey_for_test(1), Keypair::generate());
    let sealed = seal(&key, &address("n1", 3, 1), &body("x"), &writer, 42);
    let moved = [address("n2", 3, 1), address("n1", 2, 1), address("n1", 4, 1), address("n1", 3, 2)];
    for wrong in moved {
        assert_eq!(open::<StateBody>(&key, &wrong, &sealed), Err(EntryError::DoesNotOpen), "{wrong:?}");
    }
    let as_memory = Address { kind: Kind::Memory, ..address("n1", 3, 1) };
    assert_eq!(open::<StateBody>(&key, &as_memory, &sealed), Err(EntryError::DoesNotOpen));
    assert_eq!(open::<StateBody>(&meshkey_for_test(2), &address("n1", 3, 1), &sealed), Err(EntryError::DoesNotOpen));
    let mut flipped = sealed.clone();
    flipped.nonce = crypto::b64_encode(&[0u8; 24]);
    assert_eq!(open::<StateBody>(&key, &address("n1", 3, 1), &flipped), Err(EntryError::DoesNotOpen));
}

#[test]
fn a_member_holding_the_key_cannot_write_as_another() {
    // Someone with the mesh key seals a plaintext naming another writer: the signature fails.
    let (key, mallory, alice) = (meshkey_for_test(1), Keypair::generate(), Keypair::generate());
    let at = address("n1", 1, 1);
    let body_text = serde_json::to_string(&body("x")).expect("serializes");
    let signature = mallory.sign_hex(at.signed_bytes(&alice.public_hex(), 7, &body_text).as_bytes());
    let plaintext = serde_json::to_vec(&Plaintext { writer: alice.public_hex(), at: 7, signature, body: body_text })
        .expect("serializes");
    let nonce = crypto::random_bytes::<24>();
    let ciphertext = XChaCha20Poly1305::new((&*entry_key(&key)).into())
        .encrypt((&nonce).into(), Payload { msg: &plaintext, aad: at.associated_data().as_bytes() })
        .expect("seals");
    let forged = Sealed { nonce: crypto::b64_encode(&nonce), ciphertext: crypto::b64_encode(&ciphertext) };
    assert_eq!(open::<StateBody>(&key, &at, &forged), Err(EntryError::BadSignature));
}

#[test]
fn blinded_names_are_stable_per_mesh_and_differ_between_meshes() {
    let key = meshkey_for_test(9);
    let names = names_key(MESH, &key);
    assert_eq!(blind_name(&names, "lock/deploy"), blind_name(&names, "lock/deploy"));
    assert_ne!(blind_name(&names, "lock/deploy"), blind_name(&names, "lock/deploy2"));
    assert_ne!(blind_name(&names, "lock/deploy"), blind_name(&names_key("other", &key), "lock/deploy"));
    let blinded = blind_name(&names, "lock/deploy");
    assert_eq!(blinded.len(), 64);
    assert!(crate::protocol::is_key_hex(&blinded));
}

fn meshkey_for_test(seed: u8) -> EpochKey {
    [seed; 32]
}
