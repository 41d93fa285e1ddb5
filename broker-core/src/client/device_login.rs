//! The device-login client (RFC 8628): a pure state machine plus a driver that sleeps between
//! polls. The HTTP transport is the caller's ([`TokenPoller`]), so the CLI and the desktop app
//! share the polling rules and tests run them under paused time.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::account::{DeviceCodeResponse, TokenError, TokenResponse, token_error};

/// RFC 8628 §3.5: after `slow_down`, every later poll waits this much longer.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// One answer of the token endpoint.
#[derive(Debug, Clone)]
pub enum PollResponse {
    Token(TokenResponse),
    Error(TokenError),
}

/// How a login ended.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    SignedIn(TokenResponse),
    Denied,
    Expired,
    /// The broker answered something the flow cannot continue from.
    Failed(String),
}

/// What to do after a response.
#[derive(Debug, Clone)]
pub enum Step {
    /// Poll again at this instant.
    PollAt(Instant),
    Done(LoginOutcome),
}

#[derive(Debug, Clone)]
pub struct DeviceLogin {
    interval: Duration,
    expires_at: Instant,
    next_poll: Instant,
}

impl DeviceLogin {
    pub fn new(code: &DeviceCodeResponse, now: Instant) -> DeviceLogin {
        let interval = Duration::from_secs(code.interval.max(1));
        DeviceLogin { interval, expires_at: now + Duration::from_secs(code.expires_in), next_poll: now + interval }
    }

    /// When the first (or next) poll is due.
    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Advances on the token endpoint's answer at `now`.
    pub fn on_response(&mut self, response: PollResponse, now: Instant) -> Step {
        let error = match response {
            PollResponse::Token(token) => return Step::Done(LoginOutcome::SignedIn(token)),
            PollResponse::Error(error) => error,
        };
        match error.error.as_str() {
            token_error::AUTHORIZATION_PENDING => {}
            token_error::SLOW_DOWN => self.interval += SLOW_DOWN_STEP,
            token_error::ACCESS_DENIED => return Step::Done(LoginOutcome::Denied),
            token_error::EXPIRED_TOKEN => return Step::Done(LoginOutcome::Expired),
            _ => return Step::Done(LoginOutcome::Failed(format!("{}: {}", error.error, error.error_description))),
        }
        self.next_poll = now + self.interval;
        if self.next_poll >= self.expires_at {
            return Step::Done(LoginOutcome::Expired);
        }
        Step::PollAt(self.next_poll)
    }

    /// A poll that could not reach the broker: try again at the usual pace until the code expires.
    pub fn on_unreachable(&mut self, now: Instant) -> Step {
        self.next_poll = now + self.interval;
        if self.next_poll >= self.expires_at {
            return Step::Done(LoginOutcome::Expired);
        }
        Step::PollAt(self.next_poll)
    }
}

/// Asks the broker's token endpoint once.
pub trait TokenPoller {
    /// `Err` when the broker could not be reached (the login keeps polling).
    fn poll(&self, device_code: &str) -> impl std::future::Future<Output = Result<PollResponse, String>> + Send;
}

/// Polls until the login ends, sleeping the right amount between polls. `progress` hears the
/// time left after each poll (for a spinner or a countdown).
pub async fn run_device_login(
    code: &DeviceCodeResponse,
    poller: &impl TokenPoller,
    mut progress: impl FnMut(Duration),
) -> LoginOutcome {
    let mut login = DeviceLogin::new(code, Instant::now());
    loop {
        tokio::time::sleep_until(login.next_poll()).await;
        let step = match poller.poll(&code.device_code).await {
            Ok(response) => login.on_response(response, Instant::now()),
            Err(_) => login.on_unreachable(Instant::now()),
        };
        match step {
            Step::PollAt(_) => progress(login.expires_at().saturating_duration_since(Instant::now())),
            Step::Done(outcome) => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::protocol::account::AccountInfo;

    fn code(expires_in: u64) -> DeviceCodeResponse {
        DeviceCodeResponse {
            device_code: "dc".into(),
            user_code: "BCDF-GHJK".into(),
            verification_uri: "http://b/device".into(),
            verification_uri_complete: "http://b/device?code=BCDF-GHJK".into(),
            verification_uri_app: "claudemesh://device?code=BCDF-GHJK".into(),
            expires_in,
            interval: 5,
        }
    }

    fn error(kind: &str) -> PollResponse {
        PollResponse::Error(TokenError { error: kind.into(), error_description: String::new() })
    }

    fn token() -> PollResponse {
        PollResponse::Token(TokenResponse {
            access_token: "cmt_x".into(),
            token_type: "Bearer".into(),
            expires_in: 60,
            device_id: "dev_1".into(),
            account: AccountInfo { id: "acct_1".into(), name: "alice".into(), email: None },
        })
    }

    /// Answers from a script and records when each poll happened.
    struct Scripted {
        answers: Mutex<Vec<Result<PollResponse, String>>>,
        polled_at: Mutex<Vec<Duration>>,
        start: Instant,
    }

    impl Scripted {
        fn new(answers: Vec<Result<PollResponse, String>>) -> Scripted {
            let mut answers = answers;
            answers.reverse();
            Scripted { answers: Mutex::new(answers), polled_at: Mutex::new(Vec::new()), start: Instant::now() }
        }

        fn seconds(&self) -> Vec<u64> {
            self.polled_at.lock().expect("lock").iter().map(|d| d.as_secs()).collect()
        }
    }

    impl TokenPoller for Scripted {
        async fn poll(&self, _device_code: &str) -> Result<PollResponse, String> {
            self.polled_at.lock().expect("lock").push(self.start.elapsed());
            self.answers.lock().expect("lock").pop().unwrap_or_else(|| Ok(error(token_error::AUTHORIZATION_PENDING)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_the_interval_and_slows_down_for_good() {
        let poller = Scripted::new(vec![
            Ok(error(token_error::AUTHORIZATION_PENDING)),
            Ok(error(token_error::SLOW_DOWN)),
            Ok(error(token_error::AUTHORIZATION_PENDING)),
            Err("connection refused".into()),
            Ok(token()),
        ]);
        let outcome = run_device_login(&code(600), &poller, |_| {}).await;
        assert!(matches!(outcome, LoginOutcome::SignedIn(t) if t.access_token == "cmt_x"));
        // 5 s, then 5 s; slow_down makes it 10 s for every later poll.
        assert_eq!(poller.seconds(), [5, 10, 20, 30, 40]);
    }

    #[tokio::test(start_paused = true)]
    async fn denial_and_expiry_end_the_login() {
        let denied = Scripted::new(vec![Ok(error(token_error::ACCESS_DENIED))]);
        assert!(matches!(run_device_login(&code(600), &denied, |_| {}).await, LoginOutcome::Denied));

        let expired = Scripted::new(vec![Ok(error(token_error::EXPIRED_TOKEN))]);
        assert!(matches!(run_device_login(&code(600), &expired, |_| {}).await, LoginOutcome::Expired));

        // Nobody approves: the client gives up when the code's lifetime is over, without
        // polling past it.
        let silent = Scripted::new(vec![]);
        assert!(matches!(run_device_login(&code(22), &silent, |_| {}).await, LoginOutcome::Expired));
        assert_eq!(silent.seconds(), [5, 10, 15, 20]);

        let odd = Scripted::new(vec![Ok(error("invalid_grant"))]);
        assert!(matches!(run_device_login(&code(600), &odd, |_| {}).await, LoginOutcome::Failed(_)));
    }
}
