//! The statsd UDP listener: several sockets on one port (`SO_REUSEPORT`), each
//! read by a thread of its own many datagrams per `recvmmsg` call, and every
//! call's datagrams folded as one engine batch.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::cluster::stage::Stage;
use crate::config::StatsdSettings;
use crate::model::{DropReason, Outcome};
use crate::telemetry::Telemetry;

use super::{DatagramDecoder, DatagramTally, StatsdState};

/// How long a reader waits for a datagram before looking whether the service is closing.
const RECEIVE_WAIT: Duration = Duration::from_millis(100);

/// How often a reader holding a batch open looks for more datagrams.
const IDLE_POLL: Duration = Duration::from_micros(500);

/// Datagrams one `recvmmsg` call takes at most: a batch larger than this is
/// read in several calls, so the buffers stay `RECEIVE_SLOTS` x `max_packet_bytes`.
const RECEIVE_SLOTS: usize = 64;

/// The bound sockets of the listener, all on one address.
pub struct StatsdSockets {
    sockets: Vec<UdpSocket>,
    addr: SocketAddr,
}

impl StatsdSockets {
    /// The address every socket is bound to (the port resolved when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `settings.readers` sockets on `settings.listen`. With more than one,
/// a plain bind first proves the port free: sockets with `SO_REUSEPORT` would
/// otherwise silently share it with another process of the same user.
pub fn bind_statsd(settings: &StatsdSettings) -> io::Result<StatsdSockets> {
    let mut addr = settings.listen;
    if settings.readers > 1 {
        addr = UdpSocket::bind(addr)?.local_addr()?;
    }
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(settings.readers);
    for _ in 0..settings.readers {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if settings.readers > 1 {
            socket.set_reuse_port(true)?;
        }
        // Best effort: the kernel caps it at net.core.rmem_max; the size granted is logged.
        if let Err(error) = socket.set_recv_buffer_size(settings.receive_buffer_bytes) {
            tracing::warn!(%error, asked = settings.receive_buffer_bytes, "statsd: cannot set the receive buffer");
        }
        socket.set_read_timeout(Some(RECEIVE_WAIT))?;
        #[cfg(target_os = "linux")]
        overflow::enable(&socket)?;
        socket.bind(&addr.into())?;
        addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        sockets.push(socket.into());
    }
    if let Some(first) = sockets.first() {
        let granted = socket2::SockRef::from(first).recv_buffer_size().unwrap_or(0);
        tracing::info!(
            readers = settings.readers,
            receive_buffer_bytes = granted,
            asked = settings.receive_buffer_bytes,
            "statsd: listening on {addr} (Linux grants twice the size asked, up to twice net.core.rmem_max)"
        );
    }
    Ok(StatsdSockets { sockets, addr })
}

/// Reads `sockets` (one thread each) and feeds `stage` under the configured
/// tenant until `closing` turns true or the engine closes.
pub async fn serve_statsd(
    sockets: StatsdSockets,
    stage: Stage,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    settings: StatsdSettings,
    closing: watch::Receiver<bool>,
) {
    let state = Arc::new(StatsdState::new(&settings));
    // Held gauges go into every window, as every statsd flush has them.
    let repeater = tokio::spawn(super::repeat_held_gauges(
        Arc::clone(&state.gauges),
        stage.clone(),
        Arc::clone(&clock),
        Arc::clone(&telemetry),
        Arc::from(settings.tenant.as_str()),
        closing.clone(),
    ));
    let runtime = tokio::runtime::Handle::current();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (number, socket) in sockets.sockets.into_iter().enumerate() {
        let reader = Reader {
            socket,
            decoder: DatagramDecoder::sharing(&settings, Arc::clone(&state)),
            stage: stage.clone(),
            clock: Arc::clone(&clock),
            telemetry: Arc::clone(&telemetry),
            settings: settings.clone(),
            closing: closing.clone(),
        };
        let runtime = runtime.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("statsd-reader-{number}"))
            .spawn(move || {
                // Stage::fold_blocking finds the runtime (cluster routing, the write-ahead log) from here.
                let _entered = runtime.enter();
                reader.run();
            });
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(error) => {
                tracing::error!(%error, "statsd: cannot start reader thread {number}; its socket is not read")
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await;
    repeater.abort();
}

/// An error that only means "nothing to read now".
fn quiet(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One socket's thread: receive, decode, fold, count.
struct Reader {
    socket: UdpSocket,
    decoder: DatagramDecoder,
    stage: Stage,
    clock: Arc<dyn Clock>,
    telemetry: Arc<Telemetry>,
    settings: StatsdSettings,
    closing: watch::Receiver<bool>,
}

impl Reader {
    fn run(mut self) {
        let slots = self.settings.batch_datagrams.min(RECEIVE_SLOTS);
        // One byte more than allowed tells an over-long datagram from one of exactly the limit.
        let mut datagrams = Datagrams::new(slots, self.settings.max_packet_bytes + 1);
        let mut overflow = overflow::Drops::default();
        let wait = Duration::from_millis(self.settings.batch_wait_ms);
        while !*self.closing.borrow() {
            let mut count = match datagrams.receive(&self.socket, true) {
                Ok(count) => count,
                Err(error) if quiet(&error) => continue,
                Err(error) => {
                    self.decoder.warnings.warn(format_args!("receive failed: {error}"));
                    // A persistent socket error must not become a busy loop.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            self.decoder.clear();
            let mut tally = DatagramTally::default();
            let mut taken = 0;
            let started = Instant::now();
            // Keep reading into the same batch while datagrams come, up to
            // batch_datagrams or batch_wait_ms: the engine's per-batch and
            // per-series costs are then paid once for many lines of a series.
            loop {
                self.telemetry
                    .statsd_receive_dropped(overflow.since_last(datagrams.kernel_drops()));
                for index in 0..count {
                    tally.add(self.decoder.add(datagrams.get(index)));
                }
                taken += count;
                if taken >= self.settings.batch_datagrams {
                    break;
                }
                count = match datagrams.receive(&self.socket, false) {
                    Ok(count) => count,
                    Err(error) if quiet(&error) => {
                        let waited = started.elapsed();
                        if waited >= wait {
                            break;
                        }
                        std::thread::sleep((wait - waited).min(IDLE_POLL));
                        0
                    }
                    Err(error) => {
                        self.decoder.warnings.warn(format_args!("receive failed: {error}"));
                        break;
                    }
                };
            }
            if !self.fold(tally) {
                break;
            }
        }
    }

    /// Folds the decoded batch and counts it; false once the engine is closed.
    fn fold(&mut self, tally: DatagramTally) -> bool {
        let engine = self.stage.engine();
        let batch = &self.decoder.batch;
        // statsd cannot push back: while ingest is saturated the batch is dropped and counted.
        let permit = engine.limits().gate().try_enter();
        let mut open = true;
        let mut outcome = if batch.series.is_empty() {
            Outcome::default()
        } else if permit.is_none() {
            self.telemetry.overloaded("statsd");
            self.telemetry
                .limit_dropped(&batch.tenant, DropReason::Overloaded, "", tally.points);
            let mut outcome = Outcome::default();
            outcome.reject(DropReason::Overloaded, tally.points);
            outcome
        } else {
            let now_ms = self.clock.now_ms();
            let (admitted, limited) = engine.admit(batch, now_ms);
            match self.stage.fold_blocking(&admitted, now_ms, limited) {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::info!(%error, "statsd listener stops");
                    open = false;
                    Outcome::default()
                }
            }
        };
        drop(permit);
        if !open {
            return false;
        }
        let tenant = &self.settings.tenant;
        outcome.reject(DropReason::InvalidSeries, tally.malformed_lines);
        // `received` last: whoever sees it can rely on the outcome being counted.
        self.telemetry.ingested_by("statsd", tenant, &outcome);
        self.telemetry.statsd_malformed(tally.malformed_lines);
        self.telemetry.statsd_name_collisions(tally.name_collisions);
        self.telemetry
            .received_by("statsd", tenant, tally.points + tally.malformed_lines);
        true
    }
}

/// Buffers for up to `count` datagrams of `slot` bytes each, filled by one
/// `recvmmsg` call (on Linux; elsewhere one datagram per call).
struct Datagrams {
    buffers: Box<[u8]>,
    slot: usize,
    lengths: Vec<usize>,
    #[cfg(target_os = "linux")]
    mmsg: mmsg::Headers,
}

impl Datagrams {
    fn new(count: usize, slot: usize) -> Self {
        let mut buffers = vec![0u8; count * slot].into_boxed_slice();
        Datagrams {
            #[cfg(target_os = "linux")]
            mmsg: mmsg::Headers::new(&mut buffers, count, slot),
            buffers,
            slot,
            lengths: Vec::with_capacity(count),
        }
    }

    /// Takes every datagram queued, up to the buffers' count, after waiting
    /// up to [`RECEIVE_WAIT`] for the first when `wait`. Returns how many.
    fn receive(&mut self, socket: &UdpSocket, wait: bool) -> io::Result<usize> {
        self.lengths.clear();
        #[cfg(target_os = "linux")]
        {
            self.mmsg.receive(socket, wait, &mut self.lengths)?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            socket.set_nonblocking(!wait)?;
            let length = socket.recv(&mut self.buffers[..self.slot])?;
            self.lengths.push(length);
        }
        Ok(self.lengths.len())
    }

    /// Datagram `index` of the last [`Datagrams::receive`].
    fn get(&self, index: usize) -> &[u8] {
        let start = index * self.slot;
        &self.buffers[start..start + self.lengths[index]]
    }

    /// The socket's count of datagrams the kernel dropped (its receive buffer
    /// was full), as of the last datagram received; `None` when not known.
    fn kernel_drops(&self) -> Option<u32> {
        #[cfg(target_os = "linux")]
        {
            self.mmsg.kernel_drops(self.lengths.len())
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

#[cfg(target_os = "linux")]
mod mmsg {
    //! `recvmmsg(2)`: many datagrams per system call, each with the socket's
    //! drop count (`SO_RXQ_OVFL`) in its control message.

    use std::io;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// Room for one `SO_RXQ_OVFL` control message (a `u32`), generously aligned.
    const CONTROL_BYTES: usize = 64;

    /// The `mmsghdr` array and what it points into. The pointers stay valid
    /// because the boxes never move or resize while `Headers` lives.
    pub(super) struct Headers {
        headers: Box<[libc::mmsghdr]>,
        _iovecs: Box<[libc::iovec]>,
        _controls: Box<[[u64; CONTROL_BYTES / 8]]>,
    }

    impl Headers {
        pub(super) fn new(buffers: &mut [u8], count: usize, slot: usize) -> Self {
            let mut iovecs: Box<[libc::iovec]> = (0..count)
                .map(|index| libc::iovec {
                    iov_base: buffers[index * slot..].as_mut_ptr().cast(),
                    iov_len: slot,
                })
                .collect();
            let mut controls = vec![[0u64; CONTROL_BYTES / 8]; count].into_boxed_slice();
            let headers = (0..count)
                .map(|index| {
                    // SAFETY: mmsghdr is plain data; all zero is a valid (empty) value.
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_iov = &mut iovecs[index];
                    header.msg_hdr.msg_iovlen = 1;
                    header.msg_hdr.msg_control = controls[index].as_mut_ptr().cast();
                    header
                })
                .collect();
            Headers {
                headers,
                _iovecs: iovecs,
                _controls: controls,
            }
        }

        /// One `recvmmsg` call; pushes the length of each datagram received.
        pub(super) fn receive(&mut self, socket: &UdpSocket, wait: bool, lengths: &mut Vec<usize>) -> io::Result<()> {
            for header in self.headers.iter_mut() {
                header.msg_len = 0;
                header.msg_hdr.msg_flags = 0;
                header.msg_hdr.msg_controllen = CONTROL_BYTES as _;
            }
            // SAFETY: every header points at its own iovec, buffer slot and
            // control block, all alive and unaliased for the call.
            let received = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    self.headers.as_mut_ptr(),
                    self.headers.len() as _,
                    if wait { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT },
                    std::ptr::null_mut(),
                )
            };
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            lengths.extend(self.headers[..received as usize].iter().map(|h| h.msg_len as usize));
            Ok(())
        }

        /// The drop count carried by the last of the `received` datagrams.
        pub(super) fn kernel_drops(&self, received: usize) -> Option<u32> {
            let header = &self.headers[received.checked_sub(1)?].msg_hdr;
            // SAFETY: the kernel filled msg_control up to msg_controllen; the
            // CMSG_* macros stay within it.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(header);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                        return Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u32>()));
                    }
                    cmsg = libc::CMSG_NXTHDR(header, cmsg);
                }
            }
            // The kernel attaches the count only once it is above 0.
            Some(0)
        }
    }
}

mod overflow {
    //! The kernel's count of datagrams dropped on a socket (`SO_RXQ_OVFL`), turned into increments.

    /// Turns the socket's cumulative drop count into increments.
    #[derive(Default)]
    pub(super) struct Drops {
        last: u32,
    }

    impl Drops {
        /// Datagrams dropped since the count was last seen.
        pub(super) fn since_last(&mut self, count: Option<u32>) -> u64 {
            let Some(count) = count else { return 0 };
            let dropped = count.wrapping_sub(self.last);
            self.last = count;
            u64::from(dropped)
        }
    }

    /// Asks the kernel to attach the drop count to every datagram.
    #[cfg(target_os = "linux")]
    pub(super) fn enable(socket: &socket2::Socket) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option value of the right size.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RXQ_OVFL,
                std::ptr::addr_of!(on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
