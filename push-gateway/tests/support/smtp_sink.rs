//! A small SMTP server for tests: listens on `127.0.0.1:0`, speaks plain SMTP (EHLO/HELO,
//! MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT; no STARTTLS, no AUTH, no extensions) and keeps
//! every message it accepts.
//!
//! The recipient's local part scripts the answer to `RCPT TO`:
//! - `reject…` → `550 5.1.1 mailbox unavailable` (a permanent failure);
//! - `busy…` → `451 4.3.0 try again later` (a transient failure);
//! - `slow…` → accepted, but the end of DATA is answered after [`SmtpSink::slow_delay`];
//! - anything else → accepted.
//!
//! Include it with `#[path = "support/smtp_sink.rs"] mod smtp_sink;`, start it with
//! [`SmtpSink::start`] and point an `EmailConfig::smtp_url` at [`SmtpSink::url`].

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a `slow…` recipient delays the answer to the end of DATA.
pub const SLOW_DELAY: Duration = Duration::from_millis(200);

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The `MAIL FROM` address, without angle brackets.
    pub from: String,
    /// The `RCPT TO` addresses accepted, without angle brackets.
    pub recipients: Vec<String>,
    /// The message as sent after DATA, dot-unstuffed, lines joined by CRLF, without the final
    /// `.` line.
    pub data: String,
}

impl ReceivedMessage {
    /// The header section (up to the first empty line).
    pub fn head(&self) -> &str {
        self.data
            .split_once("\r\n\r\n")
            .map_or(self.data.as_str(), |(h, _)| h)
    }

    /// The body (after the first empty line).
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The first top-level header named `name` (case-insensitive), unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut found: Option<String> = None;
        for line in self.head().split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.trim().eq_ignore_ascii_case(name) {
                    found = Some(v.trim().to_owned());
                }
            }
        }
        found
    }
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMessage>,
    sessions: usize,
    in_flight: usize,
    max_in_flight: usize,
}

/// The running server; stops accepting connections when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl SmtpSink {
    /// Binds `127.0.0.1:0` and serves connections until dropped.
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("SMTP sink address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    state.lock().sessions += 1;
                    // A client going away mid-session is fine: whatever it completed is kept.
                    let _ = Session::new(Arc::clone(&state)).run(stream).await;
                });
            }
        });
        SmtpSink {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:<port>`: plain SMTP, what `EmailConfig::smtp_url` takes.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The messages accepted so far, in the order their DATA completed.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state.lock().messages.clone()
    }

    /// Connections accepted so far.
    pub fn sessions(&self) -> usize {
        self.state.lock().sessions
    }

    /// The most mail transactions (MAIL FROM to the end of DATA, RSET or disconnect) that were
    /// open at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().max_in_flight
    }

    /// Waits until at least `n` messages were accepted, or panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<ReceivedMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "SMTP sink got {} messages, expected {n}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One connection's mail transaction.
struct Session {
    state: Arc<Mutex<State>>,
    from: Option<String>,
    recipients: Vec<String>,
    slow: bool,
}

impl Session {
    fn new(state: Arc<Mutex<State>>) -> Self {
        Self {
            state,
            from: None,
            recipients: Vec::new(),
            slow: false,
        }
    }

    async fn run(mut self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        write.write_all(b"220 herald-sink ESMTP ready\r\n").await?;
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                break;
            }
            let cmd = line.trim_end_matches(['\r', '\n']);
            let verb = cmd
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let reply: String = match verb.as_str() {
                "EHLO" => "250-herald-sink greets you\r\n250 HELP\r\n".into(),
                "HELO" => "250 herald-sink\r\n".into(),
                "MAIL" => match path_after(cmd, "FROM:") {
                    Some(from) => {
                        self.reset();
                        self.from = Some(from);
                        let mut s = self.state.lock();
                        s.in_flight += 1;
                        s.max_in_flight = s.max_in_flight.max(s.in_flight);
                        "250 2.1.0 sender ok\r\n".into()
                    }
                    None => "501 5.5.4 syntax: MAIL FROM:<address>\r\n".into(),
                },
                "RCPT" => match (&self.from, path_after(cmd, "TO:")) {
                    (None, _) => "503 5.5.1 need MAIL first\r\n".into(),
                    (Some(_), None) => "501 5.5.4 syntax: RCPT TO:<address>\r\n".into(),
                    (Some(_), Some(to)) => {
                        let local = to
                            .split('@')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_lowercase();
                        if local.starts_with("reject") {
                            "550 5.1.1 mailbox unavailable\r\n".into()
                        } else if local.starts_with("busy") {
                            "451 4.3.0 try again later\r\n".into()
                        } else {
                            self.slow |= local.starts_with("slow");
                            self.recipients.push(to);
                            "250 2.1.5 recipient ok\r\n".into()
                        }
                    }
                },
                "DATA" => {
                    if self.recipients.is_empty() {
                        "503 5.5.1 need RCPT first\r\n".into()
                    } else {
                        write
                            .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                            .await?;
                        let Some(data) = read_data(&mut read).await? else {
                            break;
                        };
                        if self.slow {
                            tokio::time::sleep(SLOW_DELAY).await;
                        }
                        let message = ReceivedMessage {
                            from: self.from.clone().unwrap_or_default(),
                            recipients: std::mem::take(&mut self.recipients),
                            data,
                        };
                        self.state.lock().messages.push(message);
                        self.reset();
                        "250 2.0.0 queued\r\n".into()
                    }
                }
                "RSET" => {
                    self.reset();
                    "250 2.0.0 ok\r\n".into()
                }
                "NOOP" => "250 2.0.0 ok\r\n".into(),
                "QUIT" => {
                    write.write_all(b"221 2.0.0 bye\r\n").await?;
                    break;
                }
                _ => "502 5.5.2 command not recognized\r\n".into(),
            };
            write.write_all(reply.as_bytes()).await?;
        }
        self.reset();
        Ok(())
    }

    /// Ends the open transaction, if any.
    fn reset(&mut self) {
        if self.from.take().is_some() {
            self.state.lock().in_flight -= 1;
        }
        self.recipients.clear();
        self.slow = false;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reset();
    }
}

/// The address of `MAIL FROM:<a>` / `RCPT TO:<a>` (parameters after it ignored).
fn path_after(cmd: &str, keyword: &str) -> Option<String> {
    let (_, rest) = cmd.split_once(' ')?;
    let rest = rest.trim_start();
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let (addr, _) = inner.split_once('>')?;
    Some(addr.to_owned())
}

/// Reads the DATA section up to the `.` line, undoing dot-stuffing. `None` when the client
/// went away first.
async fn read_data<R: AsyncBufReadExt + Unpin>(read: &mut R) -> std::io::Result<Option<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if read.read_until(b'\n', &mut raw).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&raw);
        let line = text.trim_end_matches(['\r', '\n']);
        if line == "." {
            return Ok(Some(lines.join("\r\n")));
        }
        lines.push(line.strip_prefix('.').unwrap_or(line).to_owned());
    }
}
