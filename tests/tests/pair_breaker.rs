//! A runaway session through the real bridge: the broker holds its flood to one peer, the
//! model that sent it and the peer's model are told why, and a person releases the pair with
//! `claudemesh release` (not a tool any model has).

use anyhow::Result;
use claudemesh_e2e::{Broker, Device, WAIT};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_held_both_models_are_told_and_a_person_releases_it() -> Result<()> {
    let broker = Broker::start_with(&["--pair-burst", "3", "--pair-per-minute", "1"]).await?;
    let (_, link) = broker.mesh_with_invite("team", 2)?;
    let (alice_dev, bob_dev) = (Device::new()?, Device::new()?);
    alice_dev.join(&link, "alice")?;
    bob_dev.join(&link, "bob")?;
    let mut alice = alice_dev.bridge().await?;
    let mut bob = bob_dev.bridge().await?;
    alice.call_until("list_peers", json!({}), |list| list.to_string().contains("\"bob\"")).await?;

    let send = json!({"to": "bob", "message": "status?"});
    for n in 0..3 {
        let sent = alice.call("send_message", send.clone()).await?;
        assert_eq!(sent["results"][0]["ok"], true, "message {n}: {sent}");
    }
    // The fourth is refused, and the model reads why and who can release it.
    let refused = alice.call_error("send_message", send.clone()).await?;
    assert!(refused.contains("held") && refused.contains("claudemesh release"), "{refused}");

    // Bob's model hears it from claudemesh itself, as a notice about alice.
    let notice = bob
        .notification(WAIT, |n| n.method == "notifications/claude/channel" && n.params["meta"]["kind"] == "notice")
        .await
        .expect("bob's session is told");
    assert_eq!(notice.params["meta"]["from_name"], "claudemesh");
    let content = notice.params["content"].as_str().unwrap_or_default();
    assert!(content.contains("alice sent bob more direct messages"), "{content}");

    // No model can release it: there is no such tool.
    let tools = alice.request("tools/list", json!({})).await?;
    let names: Vec<&str> = tools["tools"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    assert!(!names.is_empty() && names.iter().all(|name| !name.contains("release")), "{names:?}");

    // A person can.
    let released = alice_dev.command().args(["release", "bob", "--json"]).output()?;
    assert!(released.status.success(), "{}", String::from_utf8_lossy(&released.stderr));
    let released: Value = serde_json::from_slice(&released.stdout)?;
    assert_eq!((released["released"].as_bool(), released["peer"].as_str()), (Some(true), Some("bob")), "{released}");
    let sent = alice.call("send_message", send).await?;
    assert_eq!(sent["results"][0]["ok"], true, "flows again: {sent}");
    Ok(())
}
