//! The C-STORE SCP: a listener thread and one thread per association.
//!
//! An association is negotiated by `accept`, then serves C-ECHO and C-STORE
//! until the peer releases or aborts it, or a timeout passes. A data set
//! goes to its temporary file in the inbox fragment by fragment as PDUs
//! arrive (`store::Incoming`), so memory does not grow with the instance;
//! an A-ABORT, a closed connection or a timeout mid-instance removes that
//! file, and Success is answered only once the file is durable.
//!
//! A reload (`Scp::reconfigure`) swaps the listening socket and the
//! settings new associations get; those in progress finish under the
//! settings they were accepted with, on the old socket's threads.

use super::accept::{local_limit_exceeded, AcceptedContext, Acceptor, Decision};
use super::dimse::{command_field, CommandSet, MessageStream, Part, Status, VERIFICATION_SOP_CLASS};
use super::store::{Announced, InboxWriter, Incoming, Refusal};
use crate::config::dicom::Listen;
use bytes::BytesMut;
use dicom_ul::association::read_pdu_from_wire;
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, Pdu};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Refusals beyond the association limit are answered by at most this many
/// threads at once; further connections are closed unanswered.
const MAX_REFUSERS: usize = 16;
/// Waits on the socket are cut into slices this long, so a stop request
/// is seen between messages.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// The accept loop looks at its stop and reload requests this often.
const ACCEPT_CHECK: Duration = Duration::from_millis(100);

/// The running SCP. Dropping it stops accepting, aborts idle associations
/// and waits for those in the middle of a message.
pub struct Scp {
    shared: Arc<Shared>,
    endpoint: Option<Endpoint>,
}

/// What every listener of this process shares: the inbox, the stop
/// request, the association count (`max_associations` counts those of a
/// retired listener too) and the association threads.
struct Shared {
    writer: InboxWriter,
    stop: AtomicBool,
    active: AtomicUsize,
    refusing: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One listening socket and its accept thread, which hands the socket back
/// when told to stop accepting.
struct Endpoint {
    settings: Arc<Listen>,
    local: SocketAddr,
    accepting: Arc<AtomicBool>,
    thread: JoinHandle<TcpListener>,
}

impl Scp {
    /// Binds `dicom.listen` and starts accepting; received instances go to `inbox`.
    pub fn start(settings: &Listen, inbox: &Path) -> io::Result<Scp> {
        let listener = bind(settings)?;
        let writer = InboxWriter::new(inbox);
        writer.sweep_partials();
        let shared = Arc::new(Shared {
            writer,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let endpoint = Endpoint::start(listener, Arc::new(settings.clone()), &shared)?;
        Ok(Scp {
            shared,
            endpoint: Some(endpoint),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        // None only after a failed thread start during a reload.
        self.endpoint
            .as_ref()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |e| e.local)
    }

    /// Applies changed listen settings (a `SIGHUP` reload). New
    /// associations get the new settings at once; those in progress keep
    /// theirs and run until their peer ends them. A changed address is
    /// bound before the old one is closed; if it cannot be bound, the old
    /// listener and settings stay and the error is returned.
    pub fn reconfigure(&mut self, settings: &Listen) -> io::Result<()> {
        let Some(current) = self.endpoint.take() else {
            return Err(io::Error::other("the SCP has stopped"));
        };
        if *current.settings == *settings {
            self.endpoint = Some(current);
            return Ok(());
        }
        let same_address =
            current.settings.bind_address() == settings.bind_address() && current.settings.port == settings.port;
        let listener = if same_address {
            match current.retire() {
                Some(listener) => listener,
                None => bind(settings)?,
            }
        } else {
            match bind(settings) {
                Ok(listener) => {
                    let old = current.local;
                    drop(current.retire());
                    tracing::info!(target: "net", address = %old, "stopped listening; associations in progress continue");
                    listener
                }
                // The same port on another address of this host: free it first.
                Err(error) if error.kind() == io::ErrorKind::AddrInUse && current.settings.port == settings.port => {
                    let (old_settings, old_local) = (current.settings.clone(), current.local);
                    drop(current.retire());
                    match bind(settings) {
                        Ok(listener) => listener,
                        Err(error) => {
                            let old = TcpListener::bind(old_local)?;
                            self.endpoint = Some(Endpoint::start(old, old_settings, &self.shared)?);
                            return Err(error);
                        }
                    }
                }
                Err(error) => {
                    self.endpoint = Some(current);
                    return Err(error);
                }
            }
        };
        self.endpoint = Some(Endpoint::start(listener, Arc::new(settings.clone()), &self.shared)?);
        Ok(())
    }
}

fn bind(settings: &Listen) -> io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(settings.bind_address(), settings.port as u16))
}

impl Endpoint {
    fn start(listener: TcpListener, settings: Arc<Listen>, shared: &Arc<Shared>) -> io::Result<Endpoint> {
        let local = listener.local_addr()?;
        let accepting = Arc::new(AtomicBool::new(true));
        tracing::info!(target: "net", address = %local, ae_title = %settings.ae_title.get_ref(), "listening for DICOM associations");
        let thread = {
            let (settings, accepting, shared) = (settings.clone(), accepting.clone(), shared.clone());
            std::thread::Builder::new()
                .name("scp-listen".into())
                .spawn(move || accept_loop(listener, &settings, &accepting, &shared))?
        };
        Ok(Endpoint {
            settings,
            local,
            accepting,
            thread,
        })
    }

    /// Stops accepting and takes the socket back (connections not yet
    /// accepted wait in its backlog for the next accept loop).
    fn retire(self) -> Option<TcpListener> {
        self.accepting.store(false, Ordering::SeqCst);
        self.thread.join().ok()
    }
}

impl Drop for Scp {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(endpoint) = self.endpoint.take() {
            drop(endpoint.retire());
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    settings: &Arc<Listen>,
    accepting: &AtomicBool,
    shared: &Arc<Shared>,
) -> TcpListener {
    while accepting.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
        if !readable(&listener, ACCEPT_CHECK) {
            shared.reap();
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(target: "net", %error, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if shared.active.load(Ordering::SeqCst) >= settings.max_associations as usize {
            refuse_over_limit(stream, peer, settings, shared);
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let (association, settings) = (shared.clone(), settings.clone());
        let spawned = std::thread::Builder::new()
            .name("scp-association".into())
            .spawn(move || {
                serve(stream, peer, settings, &association);
                association.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(thread) => shared.threads.lock().unwrap_or_else(|e| e.into_inner()).push(thread),
            Err(error) => {
                shared.active.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(target: "net", %error, "cannot start an association thread");
            }
        }
    }
    listener
}

/// Waits up to `timeout` for a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

/// Answers an association beyond the limit with a transient A-ASSOCIATE-RJ
/// (local-limit-exceeded), on a thread of its own so that a slow peer cannot
/// stall the listener; the associations in progress are not touched.
fn refuse_over_limit(mut stream: TcpStream, peer: SocketAddr, settings: &Listen, shared: &Arc<Shared>) {
    tracing::warn!(target: "net", peer = %peer.ip(), limit = settings.max_associations, "association refused: dicom.listen.max_associations reached");
    if shared.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSERS {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let refuser = shared.clone();
    let max_pdu = settings.max_pdu_bytes();
    let spawned = std::thread::Builder::new().name("scp-refuse".into()).spawn(move || {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buffer = BytesMut::new();
        if let Ok(Pdu::AssociationRQ(_)) = read_pdu_from_wire(&mut stream, &mut buffer, max_pdu, true) {
            let _ = send(&mut stream, &Pdu::AssociationRJ(local_limit_exceeded()));
        }
        refuser.refusing.fetch_sub(1, Ordering::SeqCst);
    });
    if spawned.is_err() {
        shared.refusing.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Joins the association threads that have ended.
    fn reap(&self) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
        *threads = running;
        drop(threads);
        for thread in done {
            let _ = thread.join();
        }
    }
}

/// How an association ended, for its log line.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Released,
    AbortedByPeer,
    TimedOut,
    Closed,
    ProtocolError,
    Stopping,
}

#[derive(Default)]
struct Tally {
    stored: u64,
    refused: u64,
    echoes: u64,
}

fn serve(mut stream: TcpStream, peer: SocketAddr, settings: Arc<Listen>, shared: &Shared) {
    let mut buffer = BytesMut::new();
    let _ = stream.set_write_timeout(Some(settings.read_timeout.as_duration()));
    let _ = stream.set_read_timeout(Some(settings.connect_timeout.as_duration()));
    let request = match read_pdu_from_wire(&mut stream, &mut buffer, settings.max_pdu_bytes(), true) {
        Ok(Pdu::AssociationRQ(request)) => request,
        Ok(_) => {
            abort(&mut stream, AbortRQServiceProviderReason::UnexpectedPdu);
            return;
        }
        Err(error) => {
            tracing::info!(target: "net", peer = %peer.ip(), %error, "connection closed before an A-ASSOCIATE-RQ");
            return;
        }
    };
    let calling = request.calling_ae_title.trim().to_string();
    let acceptor = Acceptor {
        ae_title: settings.ae_title.get_ref(),
        allow: &settings.allow,
        max_pdu: settings.max_pdu_bytes(),
    };
    let contexts = match acceptor.negotiate(request, peer.ip()) {
        Decision::Reject { response, reason } => {
            tracing::warn!(target: "net", peer = %peer.ip(), calling_ae = %calling, reason, "association rejected");
            let _ = send(&mut stream, &Pdu::AssociationRJ(response));
            return;
        }
        Decision::Accept { response, contexts, .. } => {
            if send(&mut stream, &Pdu::AssociationAC(response)).is_err() {
                return;
            }
            contexts
        }
    };
    tracing::info!(target: "net", peer = %peer.ip(), calling_ae = %calling, contexts = contexts.len(), "association accepted");
    let mut session = Session {
        stream,
        buffer,
        calling,
        peer: peer.ip(),
        contexts,
        settings,
        shared,
        tally: Tally::default(),
    };
    let ending = session.run();
    let Tally {
        stored,
        refused,
        echoes,
    } = session.tally;
    tracing::info!(target: "net", peer = %session.peer, calling_ae = %session.calling, ending = ?ending, stored, refused, echoes, "association ended");
}

struct Session<'a> {
    stream: TcpStream,
    buffer: BytesMut,
    calling: String,
    peer: IpAddr,
    contexts: Vec<AcceptedContext>,
    /// The settings the association was accepted under, kept for its life.
    settings: Arc<Listen>,
    shared: &'a Shared,
    tally: Tally,
}

/// A C-STORE whose data set is arriving: its file, or the refusal already
/// decided (the fragments are read and dropped, then it is answered).
/// Dropped unanswered, the file is removed.
struct Pending {
    context_id: u8,
    command: CommandSet,
    sink: Result<Incoming, Refusal>,
}

impl Session<'_> {
    fn run(&mut self) -> Ending {
        let mut stream = MessageStream::default();
        let mut pending: Option<Pending> = None;
        loop {
            let pdu = match self.next_pdu(stream.in_progress()) {
                Ok(pdu) => pdu,
                Err(ending) => {
                    if matches!(ending, Ending::TimedOut | Ending::Stopping) {
                        abort(&mut self.stream, AbortRQServiceProviderReason::ReasonNotSpecified);
                    }
                    return ending;
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        let part = match stream.push(value) {
                            Ok(Some(part)) => part,
                            Ok(None) => continue,
                            Err(error) => {
                                tracing::warn!(target: "net", calling_ae = %self.calling, %error, "aborting the association");
                                abort(&mut self.stream, AbortRQServiceProviderReason::InvalidPduParameter);
                                return Ending::ProtocolError;
                            }
                        };
                        if let Err(ending) = self.take(part, &mut pending) {
                            return ending;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = send(&mut self.stream, &Pdu::ReleaseRP);
                    return Ending::Released;
                }
                Pdu::AbortRQ { .. } => return Ending::AbortedByPeer,
                _ => {
                    abort(&mut self.stream, AbortRQServiceProviderReason::UnexpectedPdu);
                    return Ending::ProtocolError;
                }
            }
        }
    }

    /// The next PDU: within `read_timeout` in the middle of a message,
    /// `idle_timeout` between messages; a stop request ends the wait
    /// between messages only.
    fn next_pdu(&mut self, mid_message: bool) -> Result<Pdu, Ending> {
        let settings = &self.settings;
        let limit = if mid_message {
            settings.read_timeout
        } else {
            settings.idle_timeout
        }
        .as_duration();
        let started = Instant::now();
        loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Ending::TimedOut);
            }
            if !mid_message && self.shared.stop.load(Ordering::SeqCst) {
                return Err(Ending::Stopping);
            }
            let _ = self.stream.set_read_timeout(Some(left.min(STOP_CHECK)));
            match read_pdu_from_wire(&mut self.stream, &mut self.buffer, self.settings.max_pdu_bytes(), true) {
                Ok(pdu) => return Ok(pdu),
                Err(error) if is_timeout(&error) => continue,
                Err(error) => {
                    tracing::info!(target: "net", calling_ae = %self.calling, %error, "association lost");
                    return Err(Ending::Closed);
                }
            }
        }
    }

    /// Acts on one part of a message; answers once the message is whole.
    fn take(&mut self, part: Part, pending: &mut Option<Pending>) -> Result<(), Ending> {
        match part {
            Part::Command {
                presentation_context_id: id,
                command,
            } => {
                let Some(context) = self.contexts.iter().find(|c| c.id == id).cloned() else {
                    abort(&mut self.stream, AbortRQServiceProviderReason::InvalidPduParameter);
                    return Err(Ending::ProtocolError);
                };
                if command.has_data_set() {
                    let sink = self.begin(&context, &command);
                    *pending = Some(Pending {
                        context_id: id,
                        command,
                        sink,
                    });
                    return Ok(());
                }
                let outcome = match command.command_field {
                    command_field::C_ECHO_RQ => Ok(()),
                    command_field::C_STORE_RQ => Err(Refusal {
                        status: Status::ERROR_CANNOT_UNDERSTAND,
                        comment: "the C-STORE-RQ carries no data set".into(),
                    }),
                    _ => Err(unsupported()),
                };
                self.respond(id, &command, outcome)
            }
            Part::Data { data, last, .. } => {
                let Some(message) = pending.as_mut() else {
                    abort(&mut self.stream, AbortRQServiceProviderReason::UnexpectedPdu);
                    return Err(Ending::ProtocolError);
                };
                if let Ok(incoming) = &mut message.sink {
                    incoming.append(&data);
                }
                match (last, pending.take()) {
                    (true, Some(message)) => {
                        let outcome = message.sink.and_then(|incoming| incoming.finish().map(drop));
                        self.respond(message.context_id, &message.command, outcome)
                    }
                    (_, taken) => {
                        *pending = taken;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Where a request's data set goes: a C-STORE on its own SOP class's
    /// context gets a file in the inbox; anything else a refusal.
    fn begin(&self, context: &AcceptedContext, command: &CommandSet) -> Result<Incoming, Refusal> {
        if command.command_field != command_field::C_STORE_RQ {
            return Err(unsupported());
        }
        let sop_class = command.affected_sop_class_uid.as_deref().unwrap_or_default();
        if context.abstract_syntax == VERIFICATION_SOP_CLASS || sop_class != context.abstract_syntax {
            return Err(Refusal {
                status: Status::REFUSED_SOP_CLASS_NOT_SUPPORTED,
                comment: "the SOP class is not the presentation context's".into(),
            });
        }
        self.shared.writer.begin(&Announced {
            calling_ae_title: &self.calling,
            sop_class_uid: sop_class,
            sop_instance_uid: command.affected_sop_instance_uid.as_deref().unwrap_or_default(),
            transfer_syntax: &context.transfer_syntax,
        })
    }

    /// Sends the response to `command`: Success, or the refusal.
    fn respond(&mut self, context_id: u8, command: &CommandSet, outcome: Result<(), Refusal>) -> Result<(), Ending> {
        let is_store = command.command_field == command_field::C_STORE_RQ;
        let response = match outcome {
            Ok(()) => {
                match is_store {
                    true => self.tally.stored += 1,
                    false => self.tally.echoes += 1,
                }
                command.response(Status::SUCCESS, None)
            }
            Err(refusal) => {
                if is_store {
                    self.tally.refused += 1;
                    tracing::warn!(target: "net", calling_ae = %self.calling, status = %refusal.status, reason = %refusal.comment, "C-STORE refused");
                } else {
                    tracing::warn!(target: "net", calling_ae = %self.calling, command_field = command.command_field, "unsupported DIMSE command");
                }
                command.response(refusal.status, Some(&refusal.comment))
            }
        };
        send(&mut self.stream, &super::dimse::command_pdu(context_id, &response)).map_err(|_| Ending::Closed)
    }
}

fn unsupported() -> Refusal {
    Refusal {
        status: Status(0x0211),
        comment: "synthd serves C-ECHO and C-STORE only".into(),
    }
}

fn send(stream: &mut TcpStream, pdu: &Pdu) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(512);
    dicom_ul::write_pdu(&mut bytes, pdu).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    stream.write_all(&bytes)
}

fn abort(stream: &mut TcpStream, reason: AbortRQServiceProviderReason) {
    let _ = send(
        stream,
        &Pdu::AbortRQ {
            source: AbortRQSource::ServiceProvider(reason),
        },
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Whether a dicom-ul read failed only because the socket timeout passed.
pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
        }
        source = inner.source();
    }
    false
}
