//! `resolve`: the members a target reaches, so the sender can seal a copy of the content key
//! to each.

use std::sync::Arc;

use crate::protocol::{self, Capability, Recipient, Resolved, SendRejection, ServerFrame, Target};
use crate::router::Router;
use crate::router::resolve::{Resolution, resolve_target};
use crate::router::state::{SessionHandle, display_name_of};

impl Router {
    pub(in crate::router) async fn resolve_for_client(
        self: &Arc<Self>,
        session: &SessionHandle,
        resolve: protocol::Resolve,
    ) {
        let answer = |recipients: Vec<Recipient>, refusal: Option<(SendRejection, &str)>| {
            ServerFrame::Resolved(Resolved {
                target_spec: resolve.target_spec.clone(),
                recipients,
                error: refusal.map(|(reason, detail)| reason.text(detail)),
                error_code: refusal.filter(|_| session.caps.has(Capability::RefusalCode)).map(|(reason, _)| reason),
                req_id: resolve.req_id.clone(),
            })
        };
        let Some(target) = Target::parse(&resolve.target_spec) else {
            let detail = "targetSpec must be a 64-hex member or session key, @group or *";
            self.reply(session, answer(vec![], Some((SendRejection::UnknownRecipient, detail))));
            return;
        };
        let mut looked_up = false;
        loop {
            let outcome = {
                let state = session.shard.state.lock().expect("mesh lock");
                let Some(sender) = state.sessions.get(&session.session_id) else { return };
                match resolve_target(&state, sender, &target) {
                    Resolution::Deliveries(deliveries) => Ok(answer(
                        deliveries
                            .iter()
                            .filter_map(|d| state.members.get(&d.member_id))
                            .map(|m| Recipient {
                                member_pubkey: m.record.pubkey.clone(),
                                display_name: display_name_of(&state, m),
                            })
                            .collect(),
                        None,
                    )),
                    Resolution::Rejected(reason, detail) => Ok(answer(vec![], Some((reason, &detail)))),
                    Resolution::UnknownKey(key) => Err(key),
                }
            };
            match outcome {
                Ok(frame) => return self.reply(session, frame),
                Err(_) if looked_up => {
                    let detail = "no member or connected session of this mesh has that key";
                    return self.reply(session, answer(vec![], Some((SendRejection::UnknownRecipient, detail))));
                }
                Err(key) => {
                    looked_up = true;
                    if let Err(error) = self.learn_member(&session.shard, &key).await {
                        tracing::error!(%error, "member lookup failed");
                    }
                }
            }
        }
    }
}
