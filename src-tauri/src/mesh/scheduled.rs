//! Scheduled and recurring messages: a reminder sealed now for the recipients it reaches now,
//! queued by the broker later; the schedules this member made (every member's, for an admin);
//! cancelling one.

use broker_core::client::When;
use broker_core::protocol::{Priority, ScheduleInfo};
use serde::Serialize;

use super::resolve::Resolution;
use super::{LinkState, MeshError, Supervisor};

/// A reminder to schedule: to `to` (a peer as `send_message` takes it; yourself when absent).
#[derive(Debug, Clone)]
pub struct Reminder {
    pub to: Option<String>,
    pub mesh: Option<String>,
    pub text: String,
    pub priority: Priority,
    pub when: When,
}

/// A schedule as front ends show it: the broker's record, its mesh, and who it is for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledRow {
    pub mesh: String,
    /// The recipient's name (`you` for a reminder to yourself), else the target as scheduled.
    pub to: String,
    #[serde(flatten)]
    pub info: ScheduleInfo,
}

/// When a reminder fires, from what a person or model typed: exactly one of `at` (RFC 3339),
/// `in` (a duration such as `10m`) and `cron` (five fields, read in `tz`, by default this
/// machine's time zone).
pub fn when_of(
    at: Option<&str>,
    in_: Option<&str>,
    cron: Option<&str>,
    tz: Option<&str>,
    now_ms: u64,
) -> Result<When, String> {
    fn given(value: Option<&str>) -> Option<&str> {
        value.map(str::trim).filter(|v| !v.is_empty())
    }
    let (at, in_, cron, tz) = (given(at), given(in_), given(cron), given(tz));
    if tz.is_some() && cron.is_none() {
        return Err("`tz` goes with `cron`; `at` carries its own offset".to_owned());
    }
    match (at, in_, cron) {
        (Some(at), None, None) => broker_core::schedule::parse_at(at).map(When::At),
        (None, Some(delay), None) => {
            let delay = broker_core::args::parse_duration(delay)?;
            Ok(When::At(now_ms + delay.as_millis() as u64))
        }
        (None, None, Some(cron)) => {
            let tz = tz.map(str::to_owned).or_else(broker_core::schedule::local_time_zone);
            // Checked here too, so that a typo is reported before anything is sealed.
            broker_core::schedule::Recurrence::parse(cron, tz.as_deref())?;
            Ok(When::Cron { expression: cron.to_owned(), tz })
        }
        _ => Err("say when with exactly one of `at` (a time), `in` (a delay such as 10m) and `cron`".to_owned()),
    }
}

/// Words meaning "this member" in a reminder's `to`.
fn is_self(to: &str) -> bool {
    ["me", "myself", "self", "yourself"].iter().any(|word| to.eq_ignore_ascii_case(word))
}

impl Supervisor {
    /// Seals `reminder` now for who it reaches now and has the broker queue it when due.
    pub async fn schedule(&self, reminder: Reminder) -> Result<ScheduledRow, MeshError> {
        let to = reminder.to.as_deref().map(str::trim).filter(|to| !to.is_empty() && !is_self(to));
        let resolution = match to {
            None => self.own_member(reminder.mesh.as_deref())?,
            Some(to) => {
                let target = match reminder.mesh.as_deref() {
                    Some(mesh) if !to.contains(':') => format!("{mesh}:{to}"),
                    _ => to.to_owned(),
                };
                let (_, resolved) = self.resolve_targets(std::slice::from_ref(&target)).await.remove(0);
                resolved?
            }
        };
        let link = self.link_of(&resolution)?;
        link.require_connected()?;
        let info = link
            .client
            .schedule(&resolution.target_spec, reminder.text.as_bytes(), reminder.priority, reminder.when)
            .await
            .map_err(MeshError::NotSent)?;
        Ok(ScheduledRow { mesh: resolution.slug, to: resolution.label, info })
    }

    /// This member's schedules in the selected meshes (every member's where it is an admin).
    pub async fn scheduled(&self, mesh: Option<&str>) -> Result<Vec<ScheduledRow>, MeshError> {
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for link in self.select(mesh)? {
            if let Err(error) = link.require_connected() {
                errors.push(error);
                continue;
            }
            match link.client.list_scheduled().await {
                Ok(schedules) => {
                    // A key target is named by its member (member key), or by its session while
                    // that is online (session key).
                    let mut names: Vec<(String, String)> = Vec::new();
                    if schedules.iter().any(|s| broker_core::protocol::is_key_hex(&s.target_spec)) {
                        let members = link.client.list_members().await.unwrap_or_default();
                        names.extend(members.into_iter().map(|m| (m.pubkey, m.display_name)));
                        let peers = link.peers(super::PEER_CACHE_TTL).await.unwrap_or_default();
                        names.extend(peers.into_iter().map(|p| (p.pubkey, p.display_name)));
                    }
                    for info in schedules {
                        let to = if info.target_spec == link.entry.member_pubkey {
                            "you".to_owned()
                        } else {
                            names
                                .iter()
                                .find(|(key, _)| *key == info.target_spec)
                                .map_or_else(|| info.target_spec.clone(), |(_, name)| name.clone())
                        };
                        rows.push(ScheduledRow { mesh: link.entry.slug.clone(), to, info });
                    }
                }
                Err(error) => errors.push(link.broker_error(error)),
            }
        }
        if rows.is_empty() && !errors.is_empty() {
            return Err(MeshError::each(errors));
        }
        Ok(rows)
    }

    /// Cancels a schedule of whichever joined mesh has it; returns that mesh's slug.
    pub async fn cancel_scheduled(&self, schedule_id: &str) -> Result<String, MeshError> {
        for link in &self.links {
            if link.state() != LinkState::Connected {
                continue;
            }
            match link.client.cancel_scheduled(schedule_id).await {
                Ok(true) => return Ok(link.entry.slug.clone()),
                Ok(false) => continue,
                Err(error) => return Err(link.broker_error(error)),
            }
        }
        Err(MeshError::UnknownSchedule(schedule_id.to_owned()))
    }

    /// This member in one mesh (the only one joined, or `mesh`).
    fn own_member(&self, mesh: Option<&str>) -> Result<Resolution, MeshError> {
        let link = self.single(mesh, "yourself")?;
        Ok(Resolution {
            mesh_id: link.entry.mesh_id.clone(),
            slug: link.entry.slug.clone(),
            target_spec: link.entry.member_pubkey.clone(),
            label: "you".to_owned(),
            offline: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reminder_to_me_is_to_oneself() {
        assert!(["me", "Myself", "self", "yourself"].into_iter().all(is_self));
        assert!(!is_self("mel"));
    }

    #[test]
    fn when_is_one_time_a_delay_or_a_recurrence() {
        let now = 1_790_000_000_000;
        assert_eq!(when_of(None, Some("10m"), None, None, now), Ok(When::At(now + 600_000)));
        assert_eq!(when_of(Some("2026-12-01T09:00:00+01:00"), None, None, None, now), Ok(When::At(1_796_112_000_000)));
        let weekly = when_of(None, None, Some("0 9 * * 1"), Some("Europe/Berlin"), now);
        assert_eq!(weekly, Ok(When::Cron { expression: "0 9 * * 1".into(), tz: Some("Europe/Berlin".into()) }));
        assert!(when_of(None, None, None, None, now).expect_err("nothing").contains("exactly one"));
        assert!(when_of(Some("2026-12-01T09:00:00Z"), Some("5m"), None, None, now).is_err(), "two");
        assert!(when_of(None, Some("5m"), None, Some("UTC"), now).expect_err("tz alone").contains("cron"));
        assert!(when_of(None, None, Some("0 9 * *"), None, now).expect_err("four fields").contains("five"));
        assert!(when_of(None, Some("soon"), None, None, now).is_err());
    }
}
