//! A stand-in for the Telegram Bot API on a free loopback port: `getMe`, `getUpdates` (offsets
//! confirm earlier updates; long polling waits for a new one up to `timeout` seconds) and
//! `sendMessage`, under `/bot<token>/<method>` as the real server has them. A test types into
//! chats ([`BotApi::type_text`], [`BotApi::reply`]), reads what the bot sent
//! ([`BotApi::wait_sent`]), and takes the whole server away and back ([`BotApi::go_down`],
//! [`BotApi::come_back`]) to play an outage: connections are refused meanwhile.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The bot's own user id.
const BOT_ID: i64 = 4242;

#[derive(Default)]
struct BotState {
    token: String,
    /// Updates not yet confirmed by an offset past them.
    updates: Mutex<Vec<Value>>,
    next_update_id: AtomicI64,
    next_message_id: AtomicI64,
    /// Every accepted `sendMessage`: its body, with the `message_id` it was given.
    sent: Mutex<Vec<Value>>,
    /// Every call, by method name, in order.
    calls: Mutex<Vec<String>>,
    new_update: Notify,
    new_sent: Notify,
}

/// One chat a test types into, and the person typing.
#[derive(Debug, Clone, Copy)]
pub struct Chat {
    pub id: i64,
    pub first_name: &'static str,
    /// A group's title; `None` for a private chat with the bot.
    pub group: Option<&'static str>,
}

impl Chat {
    fn json(&self) -> Value {
        match self.group {
            Some(title) => json!({"id": self.id, "type": "group", "title": title}),
            None => json!({"id": self.id, "type": "private", "first_name": self.first_name}),
        }
    }
}

pub struct BotApi {
    pub port: u16,
    state: Arc<BotState>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl BotApi {
    pub async fn start(token: &str) -> Result<BotApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(BotState {
            token: token.to_owned(),
            next_update_id: AtomicI64::new(1000),
            next_message_id: AtomicI64::new(1),
            ..BotState::default()
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(BotApi { port, state, server: Mutex::new(Some(server)) })
    }

    /// What `--api-url` takes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The person types `text` in `chat`; the message's id.
    pub fn type_text(&self, chat: Chat, text: &str) -> i64 {
        self.push_message(chat, text, None)
    }

    /// The person answers the bot's message `to` (a `message_id` it sent) with `text`.
    pub fn reply(&self, chat: Chat, to: &Value, text: &str) -> i64 {
        self.push_message(chat, text, Some(to.clone()))
    }

    fn push_message(&self, chat: Chat, text: &str, reply_to: Option<Value>) -> i64 {
        let message_id = self.state.next_message_id.fetch_add(1, Ordering::SeqCst);
        let mut message = json!({
            "message_id": message_id,
            "date": unix_now(),
            "chat": chat.json(),
            "from": {"id": chat.id.abs(), "is_bot": false, "first_name": chat.first_name},
            "text": text,
        });
        if let Some(original) = reply_to {
            message["reply_to_message"] = bot_message(chat.id, &original);
        }
        let update_id = self.state.next_update_id.fetch_add(1, Ordering::SeqCst);
        self.state.updates.lock().expect("updates lock").push(json!({"update_id": update_id, "message": message}));
        self.state.new_update.notify_waiters();
        message_id
    }

    /// Everything the bot sent to `chat`, in order (each with its `message_id`).
    pub fn sent_to(&self, chat: Chat) -> Vec<Value> {
        self.state.sent.lock().expect("sent lock").iter().filter(|m| m["chat_id"] == json!(chat.id)).cloned().collect()
    }

    /// The first message sent to `chat` after the first `skip` that `matches`, waiting up to
    /// `timeout` for it.
    pub async fn wait_sent(
        &self,
        chat: Chat,
        skip: usize,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.new_sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.sent_to(chat).into_iter().skip(skip).find(|m| matches(text_of(m))) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let texts: Vec<String> = self.sent_to(chat).iter().map(|m| text_of(m).to_owned()).collect();
                bail!("no matching message reached chat {} in {timeout:?}; it got: {texts:#?}", chat.id);
            }
        }
    }

    /// How many calls of `method` (any case) the stand-in answered.
    pub fn calls_of(&self, method: &str) -> usize {
        let method = method.to_ascii_lowercase();
        self.state.calls.lock().expect("calls lock").iter().filter(|m| **m == method).count()
    }

    /// Updates typed but not yet confirmed by the bot's offset.
    pub fn unconfirmed(&self) -> usize {
        self.state.updates.lock().expect("updates lock").len()
    }

    /// Telegram goes away: the listener closes and open connections are cut.
    pub fn go_down(&self) {
        if let Some(server) = self.server.lock().expect("server lock").take() {
            server.abort();
        }
    }

    /// Telegram is back on the same port, with everything it had.
    pub async fn come_back(&self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        *self.server.lock().expect("server lock") = Some(tokio::spawn(serve(listener, self.state.clone())));
        Ok(())
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// A sent message's text.
pub fn text_of(message: &Value) -> &str {
    message["text"].as_str().unwrap_or_default()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Accepts connections until aborted; aborting also ends every connection it serves.
async fn serve(listener: tokio::net::TcpListener, state: Arc<BotState>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let state = state.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("header"));
    response
}

fn ok(result: Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({"ok": true, "result": result}))
}

fn refused(status: StatusCode, description: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"ok": false, "error_code": status.as_u16(), "description": description}))
}

async fn answer(state: Arc<BotState>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some((token, method)) = path.strip_prefix("/bot").and_then(|p| p.split_once('/')) else {
        return Ok(refused(StatusCode::NOT_FOUND, "Not Found"));
    };
    if token != state.token {
        return Ok(refused(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    // Method names are case-insensitive at the real server (teloxide sends `GetMe`).
    let method = method.to_ascii_lowercase();
    state.calls.lock().expect("calls lock").push(method.clone());
    let response = match method.as_str() {
        "getme" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "claudemesh", "username": "claudemesh_test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "has_main_web_app": false,
        })),
        "getupdates" => get_updates(&state, &body).await,
        "sendmessage" => send_message(&state, body),
        other => refused(StatusCode::NOT_FOUND, &format!("Not Found: the stand-in has no {other}")),
    };
    Ok(response)
}

async fn get_updates(state: &BotState, body: &Value) -> Response<Full<Bytes>> {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = state.new_update.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let pending: Vec<Value> = {
            let mut updates = state.updates.lock().expect("updates lock");
            updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
            updates.clone()
        };
        if !pending.is_empty() {
            return ok(Value::Array(pending));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ok(json!([]));
        }
    }
}

fn send_message(state: &BotState, mut body: Value) -> Response<Full<Bytes>> {
    let (Some(chat_id), Some(text)) = (body["chat_id"].as_i64(), body["text"].as_str().map(str::to_owned)) else {
        return refused(StatusCode::BAD_REQUEST, "Bad Request: chat_id and text are required");
    };
    let message_id = state.next_message_id.fetch_add(1, Ordering::SeqCst);
    body["message_id"] = json!(message_id);
    state.sent.lock().expect("sent lock").push(body);
    state.new_sent.notify_waiters();
    let sent = json!({"message_id": message_id, "text": text});
    ok(bot_message(chat_id, &sent))
}

/// A message of the bot in `chat_id`, as the Bot API describes one.
fn bot_message(chat_id: i64, sent: &Value) -> Value {
    json!({
        "message_id": sent["message_id"],
        "date": unix_now(),
        "chat": {"id": chat_id, "type": "private", "first_name": "someone"},
        "from": {"id": BOT_ID, "is_bot": true, "first_name": "claudemesh"},
        "text": sent["text"],
    })
}
