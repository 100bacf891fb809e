//! The metrics listener: one thread, one `poll(2)` loop over at most
//! `Limits::connections` sockets, each with a deadline. Requests are parsed
//! by `httparse` (hyper's parser); this file only bounds what a client may
//! cost.
//!
//! Why not a server crate: tiny_http reads a header line without limit (an
//! endless line grows memory until the process dies) and starts a thread
//! per waiting connection, so a slowloris client holds threads as long as
//! it likes; hyper needs an async runtime this daemon has no other use for.
//! Here a slow client costs one slot until its deadline, a flood evicts the
//! oldest slot, a request head is at most `head_bytes`, and a response is
//! written without blocking: nothing a client does can stall the loop for
//! longer than rendering one response, and the coordinator never waits on
//! it at all.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What one client may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; a new one evicts the oldest.
    pub connections: usize,
    /// A request head (request line and headers) at most; more gets 431.
    pub head_bytes: usize,
    /// The whole head must arrive within this, however it trickles in.
    pub head_deadline: Duration,
    /// The whole response must be taken within this.
    pub write_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            head_bytes: 8 * 1024,
            head_deadline: Duration::from_secs(2),
            write_deadline: Duration::from_secs(5),
        }
    }
}

/// A parsed request: only what routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: synthd/{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            reason_phrase(self.status),
            env!("CARGO_PKG_VERSION"),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

enum Phase {
    Reading(Vec<u8>),
    Writing { bytes: Vec<u8>, sent: usize },
}

struct Connection {
    stream: TcpStream,
    deadline: Instant,
    phase: Phase,
}

/// Serves `listener` until the process ends, answering each request with `handler`.
pub fn serve_forever(listener: TcpListener, limits: Limits, mut handler: impl FnMut(&Request) -> Response) {
    if let Err(error) = listener.set_nonblocking(true) {
        tracing::error!(target: "metrics", %error, "cannot serve metrics: the listener refused non-blocking mode");
        return;
    }
    let mut connections: Vec<Connection> = Vec::new();
    loop {
        let now = Instant::now();
        connections.retain(|c| c.deadline > now);
        let mut fds = Vec::with_capacity(connections.len() + 1);
        fds.push(pollfd(listener.as_raw_fd(), libc::POLLIN));
        for connection in &connections {
            let events = match connection.phase {
                Phase::Reading(_) => libc::POLLIN,
                Phase::Writing { .. } => libc::POLLOUT,
            };
            fds.push(pollfd(connection.stream.as_raw_fd(), events));
        }
        let wait = connections
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(60));
        // SAFETY: `fds` is a live, correctly sized array of pollfd.
        let ready = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().min(60_000) as i32 + 1,
            )
        };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() != ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let mut closed = Vec::new();
        for (index, fd) in fds.iter().enumerate().skip(1) {
            if fd.revents != 0 && !advance(&mut connections[index - 1], &limits, &mut handler) {
                closed.push(index - 1);
            }
        }
        for index in closed.into_iter().rev() {
            connections.swap_remove(index);
        }
        if fds[0].revents != 0 {
            accept_all(&listener, &limits, &mut connections);
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn accept_all(listener: &TcpListener, limits: &Limits, connections: &mut Vec<Connection>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == ErrorKind::ConnectionAborted => continue,
            // Out of descriptors: the listener stays readable, so wait a
            // little rather than spin; the deadlines free slots meanwhile.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        if connections.len() >= limits.connections {
            // The oldest has had the longest to send its request.
            let oldest = (0..connections.len()).min_by_key(|&i| connections[i].deadline);
            if let Some(oldest) = oldest {
                connections.swap_remove(oldest);
            }
        }
        connections.push(Connection {
            stream,
            deadline: Instant::now() + limits.head_deadline,
            phase: Phase::Reading(Vec::new()),
        });
    }
}

/// Reads or writes what the socket allows; false once the connection is done.
fn advance(connection: &mut Connection, limits: &Limits, handler: &mut impl FnMut(&Request) -> Response) -> bool {
    match &mut connection.phase {
        Phase::Reading(head) => {
            let mut chunk = [0u8; 4096];
            let room = (limits.head_bytes + 1).saturating_sub(head.len()).min(chunk.len());
            match connection.stream.read(&mut chunk[..room]) {
                Ok(0) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            let Some(response) = respond(head, limits, handler) else {
                return true;
            };
            connection.phase = Phase::Writing {
                bytes: response.to_bytes(),
                sent: 0,
            };
            connection.deadline = Instant::now() + limits.write_deadline;
            // Most responses fit the socket's buffer: write at once.
            advance(connection, limits, handler)
        }
        Phase::Writing { bytes, sent } => loop {
            match connection.stream.write(&bytes[*sent..]) {
                Ok(0) => return false,
                Ok(n) => {
                    *sent += n;
                    if *sent == bytes.len() {
                        let _ = connection.stream.shutdown(std::net::Shutdown::Write);
                        return false;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        },
    }
}

/// The response to a head read so far, or None while it is incomplete.
fn respond(head: &[u8], limits: &Limits, handler: &mut impl FnMut(&Request) -> Response) -> Option<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let method = request.method.unwrap_or_default().to_string();
            let target = request.path.unwrap_or("/");
            let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
            Some(handler(&Request { method, path }))
        }
        Ok(httparse::Status::Partial) if head.len() > limits.head_bytes => Some(too_large(limits)),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(too_large(limits)),
        Err(_) => Some(Response::text(400, "malformed HTTP request\n")),
    }
}

fn too_large(limits: &Limits) -> Response {
    Response::text(
        431,
        format!("request head over {} bytes or 32 headers\n", limits.head_bytes),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(request: &Request) -> Response {
        Response::text(200, format!("{} {}", request.method, request.path))
    }

    #[test]
    fn a_complete_head_is_answered_and_a_partial_one_waits() {
        let limits = Limits::default();
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", &limits, &mut handler),
            None
        );
        let response = respond(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", &limits, &mut handler).unwrap();
        assert_eq!(response.body, b"GET /metrics");
    }

    #[test]
    fn an_oversized_or_malformed_head_is_refused() {
        let limits = Limits {
            head_bytes: 64,
            ..Limits::default()
        };
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(100));
        assert_eq!(respond(long.as_bytes(), &limits, &mut handler).unwrap().status, 431);
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            respond(many.as_bytes(), &Limits::default(), &mut handler)
                .unwrap()
                .status,
            431
        );
        assert_eq!(
            respond(b"\x00\x01 nonsense\r\n\r\n", &limits, &mut handler)
                .unwrap()
                .status,
            400
        );
    }
}
