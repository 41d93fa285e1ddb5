//! Every limit and interval of the broker, with the protocol's defaults. The binary fills it
//! from flags and environment variables (see `docs/configuration.md`); tests build it directly.

use std::time::Duration;

/// A token bucket's size: `burst` at once, refilled at `per_minute` (see `router::TokenBucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_minute: u32,
}

/// When the broker holds the direct messages between two members: a runaway session (a model
/// stuck in a loop) must not flood a peer, and two sessions answering each other must not do it
/// forever. A mesh may set its own (admins: `PUT /v1/meshes/{mesh}/pair-limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairLimits {
    /// Direct messages one member may send another in a burst…
    pub burst: u32,
    /// …and per minute after it.
    pub per_minute: u32,
    /// Replies back and forth between two members, each within `loop_gap_seconds` of the
    /// last, that count as a loop.
    pub loop_turns: u32,
    pub loop_gap_seconds: u32,
}

impl Default for PairLimits {
    fn default() -> Self {
        PairLimits { burst: 8, per_minute: 6, loop_turns: 40, loop_gap_seconds: 60 }
    }
}

impl PairLimits {
    /// Checks limits an admin sets: every value at least 1, within sane bounds.
    pub fn validate(&self) -> Result<(), String> {
        let bounded = |name: &str, value: u32, max: u32| {
            if (1..=max).contains(&value) { Ok(()) } else { Err(format!("{name} must be between 1 and {max}")) }
        };
        bounded("burst", self.burst, 10_000)?;
        bounded("perMinute", self.per_minute, 10_000)?;
        bounded("loopTurns", self.loop_turns, 10_000)?;
        bounded("loopGapSeconds", self.loop_gap_seconds, 3600)
    }

    pub fn rate(&self) -> RateLimit {
        RateLimit { burst: self.burst, per_minute: self.per_minute }
    }

    /// An answer within this of the last message between the two counts as quick.
    pub fn loop_gap(&self) -> Duration {
        Duration::from_secs(u64::from(self.loop_gap_seconds))
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Cap on `nonce + ciphertext + targetSpec` of one send (`too_large` beyond it).
    pub max_message_bytes: usize,
    /// Cap on one WebSocket frame; larger frames end the connection. Leaves room for the key
    /// wraps of a sealed multicast on top of the message itself.
    pub max_frame_bytes: usize,
    pub max_connections_per_mesh: usize,
    /// Sessions one member may have open in a mesh (so one member cannot take the whole mesh).
    pub max_sessions_per_member: usize,
    /// Active member keys one account may hold in one mesh (one per device, enrolled).
    pub max_members_per_account: usize,
    pub rate_limit: RateLimit,
    /// The pair breaker's limits for meshes that set none.
    pub pair_limits: PairLimits,
    /// A `hello` timestamp further than this from broker time is refused.
    pub hello_skew: Duration,
    /// A connection that has not sent `hello` by then is closed.
    pub hello_timeout: Duration,
    pub ping_interval: Duration,
    /// A session silent (no frame, no pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// `working` decays to `idle` after this long without a new report.
    pub status_ttl: Duration,
    /// A status report stays "fresh" this long against lower-ranked sources.
    pub status_fresh_window: Duration,
    /// Undelivered entries older than this are dropped by the sweep.
    pub message_ttl: Duration,
    /// Scheduled messages one member may have pending in a mesh.
    pub max_schedules_per_member: u64,
    /// How often due scheduled messages are looked for (an occurrence is queued at most this
    /// late, while the broker runs).
    pub schedule_poll_interval: Duration,
    /// What one member may keep in a mesh's shared workspace: live state entries, memories,
    /// and the bytes of both.
    pub max_state_entries_per_member: u64,
    pub max_memories_per_member: u64,
    pub max_workspace_bytes_per_member: u64,
    pub expiry_sweep_interval: Duration,
    /// Pushes a session may have unacknowledged at once.
    pub delivery_window: usize,
    /// Queue entries held in memory per connected member and priority lane before the rest
    /// stays in the store…
    pub member_window: usize,
    /// …and bytes of payload.
    pub member_window_bytes: usize,
    /// How long a session that vanished without saying goodbye keeps its session-only mail
    /// before it goes to the member's other sessions.
    pub session_rebind_grace: Duration,
    /// Frames buffered per connection; a session that lets it fill is dropped (it reconnects
    /// and gets its unacknowledged messages again).
    pub outbox_frames: usize,
    /// …and bytes: replies such as `peers_list` can be large, so a client that keeps asking
    /// and never reads must not make the broker hold more than this for it.
    pub outbox_bytes: usize,
    /// Messages accepted but not yet committed, broker-wide; senders wait beyond it.
    pub max_uncommitted: usize,
    /// How often the directory (meshes, members) is checked for changes made by operator
    /// commands or other processes.
    pub directory_poll_interval: Duration,
    /// A device's bearer token lives this long, renewed while in use.
    pub token_ttl: Duration,
    /// A device login code lives this long.
    pub device_code_ttl: Duration,
    /// The polling interval a device login starts with.
    pub device_poll_interval: Duration,
    /// Lookups and decisions one user code allows before it is dead.
    pub device_code_attempts: u32,
    /// Wrong user codes allowed per client address and per account in a window.
    pub wrong_code_limit: RateLimit,
    /// Device logins a client address may start.
    pub device_code_request_limit: RateLimit,
    /// Invites one account may create (each may send an email)…
    pub invite_limit_per_account: RateLimit,
    /// …and invites created for one mesh, by all its admins together.
    pub invite_limit_per_mesh: RateLimit,
    /// How long an emailed sign-in code lives, and how many tries it allows.
    pub email_code_ttl: Duration,
    pub email_code_attempts: u32,
    /// Sign-in codes asked for from one client address, and for one email address…
    pub email_code_limit_per_address: RateLimit,
    pub email_code_limit_per_email: RateLimit,
    /// …and codes tried from one client address (across email addresses).
    pub email_code_verify_limit: RateLimit,
    /// Anyone may create an account (`POST /v1/signup`).
    pub open_signup: bool,
    /// Reverse proxies whose `X-Forwarded-For` and `X-Forwarded-Proto` are believed: requests
    /// from these networks carry the client's address and scheme in those headers. Nobody
    /// else's are.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Issue sign-in credentials (device tokens, login tokens) over plain http to other hosts.
    /// Off: they go only over https (a trusted proxy's `X-Forwarded-Proto`) or to this machine.
    pub allow_insecure_http: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 1024 * 1024,
            max_connections_per_mesh: 100,
            max_sessions_per_member: 32,
            max_members_per_account: 16,
            rate_limit: RateLimit { burst: 10, per_minute: 60 },
            pair_limits: PairLimits::default(),
            hello_skew: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            status_ttl: Duration::from_secs(60),
            status_fresh_window: Duration::from_secs(30),
            message_ttl: Duration::from_secs(7 * 24 * 3600),
            max_schedules_per_member: 1000,
            schedule_poll_interval: Duration::from_millis(250),
            max_state_entries_per_member: 1000,
            max_memories_per_member: 20_000,
            max_workspace_bytes_per_member: 64 * 1024 * 1024,
            expiry_sweep_interval: Duration::from_secs(3600),
            delivery_window: 256,
            member_window: 1024,
            member_window_bytes: 4 * 1024 * 1024,
            session_rebind_grace: Duration::from_secs(120),
            outbox_frames: 1024,
            outbox_bytes: 8 * 1024 * 1024,
            max_uncommitted: 16 * 1024,
            directory_poll_interval: Duration::from_secs(1),
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            device_code_ttl: Duration::from_secs(600),
            device_poll_interval: Duration::from_secs(5),
            device_code_attempts: 5,
            wrong_code_limit: RateLimit { burst: 10, per_minute: 1 },
            device_code_request_limit: RateLimit { burst: 20, per_minute: 10 },
            invite_limit_per_account: RateLimit { burst: 20, per_minute: 2 },
            invite_limit_per_mesh: RateLimit { burst: 50, per_minute: 5 },
            email_code_ttl: Duration::from_secs(600),
            email_code_attempts: 5,
            email_code_limit_per_address: RateLimit { burst: 10, per_minute: 5 },
            email_code_limit_per_email: RateLimit { burst: 3, per_minute: 1 },
            email_code_verify_limit: RateLimit { burst: 10, per_minute: 10 },
            open_signup: false,
            trusted_proxies: Vec::new(),
            allow_insecure_http: false,
        }
    }
}
