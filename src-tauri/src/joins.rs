//! Join storms: peers joining one mesh in quick succession are told as one notice, not one
//! each. Pure (the caller passes the clock); the desktop's notifications and the Telegram
//! connector's notices both use it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Joins in one mesh closer together than this are one storm.
pub const JOIN_QUIET: Duration = Duration::from_millis(1500);
/// A storm is summed up at the latest this long after its first join.
pub const JOIN_STORM_MAX: Duration = Duration::from_secs(6);

#[derive(Debug)]
struct Storm {
    started: Instant,
    until: Instant,
    mesh_name: String,
    names: Vec<String>,
}

/// A storm whose quiet period is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedStorm {
    pub mesh_id: String,
    pub mesh_name: String,
    /// Everyone who joined during it, the first (already told) included.
    pub names: Vec<String>,
}

impl EndedStorm {
    /// The storm without its first join (which was told when it happened); `None` when it was
    /// the only one.
    pub fn after_first(&self) -> Option<EndedStorm> {
        (self.names.len() > 1).then(|| EndedStorm { names: self.names[1..].to_vec(), ..self.clone() })
    }

    /// "ann, bob, cat and 2 more".
    pub fn names_line(&self) -> String {
        let shown: Vec<&str> = self.names.iter().take(3).map(String::as_str).collect();
        match self.names.len() {
            count if count > 3 => format!("{} and {} more", shown.join(", "), count - 3),
            _ => shown.join(", "),
        }
    }
}

/// Open storms by mesh id.
#[derive(Debug, Default)]
pub struct JoinStorms {
    storms: HashMap<String, Storm>,
}

impl JoinStorms {
    /// Records a join. True when it starts a storm (tell it at once); false when it joins an open
    /// one (told when [`JoinStorms::end`] sums the storm up).
    pub fn join(&mut self, mesh_id: &str, mesh_name: &str, name: &str, now: Instant) -> bool {
        if let Some(storm) = self.storms.get_mut(mesh_id)
            && now < storm.until
        {
            storm.names.push(name.to_owned());
            storm.until = (now + JOIN_QUIET).min(storm.started + JOIN_STORM_MAX);
            return false;
        }
        let storm = Storm {
            started: now,
            until: now + JOIN_QUIET,
            mesh_name: mesh_name.to_owned(),
            names: vec![name.to_owned()],
        };
        self.storms.insert(mesh_id.to_owned(), storm);
        true
    }

    /// Takes the storms whose quiet period is over (a storm of one join included: the caller
    /// decides whether there is anything left to tell).
    pub fn end(&mut self, now: Instant) -> Vec<EndedStorm> {
        let ended: Vec<String> = self.storms.iter().filter(|(_, s)| s.until <= now).map(|(id, _)| id.clone()).collect();
        ended
            .into_iter()
            .filter_map(|mesh_id| {
                let storm = self.storms.remove(&mesh_id)?;
                Some(EndedStorm { mesh_id, mesh_name: storm.mesh_name, names: storm.names })
            })
            .collect()
    }

    /// When [`JoinStorms::end`] has work next.
    pub fn next_end(&self) -> Option<Instant> {
        self.storms.values().map(|s| s.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn joins_close_together_are_one_storm_ended_after_the_quiet_or_the_maximum() {
        let mut storms = JoinStorms::default();
        let start = Instant::now();
        assert!(storms.join("m1", "acme", "ann", start), "the first join is told at once");
        assert!(!storms.join("m1", "acme", "bob", start + Duration::from_millis(500)));
        assert!(storms.join("m2", "other", "zed", start), "each mesh has its own storm");
        assert!(storms.end(start + Duration::from_millis(1900)).iter().all(|s| s.mesh_id == "m2"));
        let ended = storms.end(start + Duration::from_secs(2));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].names, ["ann", "bob"]);
        assert!(storms.next_end().is_none());

        // A steady stream is summed up no later than the maximum after its first join; the next
        // join starts a storm of its own.
        let first = start + Duration::from_secs(10);
        for i in 0..6 {
            storms.join("m1", "acme", &format!("p{i}"), first + Duration::from_secs(i));
        }
        assert_eq!(storms.next_end(), Some(first + JOIN_STORM_MAX));
        assert!(storms.join("m1", "acme", "late", first + JOIN_STORM_MAX), "a new storm");
    }

    #[test]
    fn a_storm_names_three_and_counts_the_rest() {
        let storm = |names: &[&str]| EndedStorm {
            mesh_id: "m".into(),
            mesh_name: "acme".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        assert_eq!(storm(&["ann", "bob"]).names_line(), "ann, bob");
        assert_eq!(storm(&["ann", "bob"]).after_first().map(|s| s.names), Some(vec!["bob".to_owned()]));
        assert_eq!(storm(&["ann"]).after_first(), None);
        assert_eq!(storm(&["a", "b", "c", "d", "e"]).names_line(), "a, b, c and 2 more");
    }
}
