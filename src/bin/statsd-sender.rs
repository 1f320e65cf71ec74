//! A fast statsd sender for side-by-side runs (scripts/compare-statsd.sh):
//! counter lines `bench.c<series>:1|c` at a fixed rate, many datagrams per
//! `sendmmsg` call, from many sockets (source ports) as a busy host's many
//! senders would, so the kernel spreads them over `SO_REUSEPORT` readers; prints what it sent.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use clap::Parser;

/// Sends statsd counter lines (value 1 each) at a fixed rate and prints how many it sent.
#[derive(Parser, Debug)]
struct Args {
    /// Where to send, host:port.
    #[arg(long, default_value = "127.0.0.1:8125")]
    target: String,
    /// Lines per second offered, over all sockets.
    #[arg(long, default_value_t = 2_000_000)]
    rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Lines per datagram.
    #[arg(long, default_value_t = 25)]
    lines_per_datagram: usize,
    /// Distinct series (metric names) the lines walk over.
    #[arg(long, default_value_t = 1_000)]
    series: usize,
    /// Sending sockets, each its own source port: the kernel picks a
    /// `SO_REUSEPORT` reader by source address, so few ports can all land on one.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
    /// Sending threads; each takes its share of the sockets in turn, one `sendmmsg` call each.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Datagrams handed to one `sendmmsg` call at most.
const PER_CALL: usize = 64;

fn main() {
    let args = Args::parse();
    // Every datagram of the cycle: together they name each series equally often.
    let cycle = args.series.div_ceil(args.lines_per_datagram).max(1);
    let datagrams: Vec<Vec<u8>> = (0..cycle)
        .map(|index| {
            (0..args.lines_per_datagram)
                .map(|line| {
                    format!(
                        "bench.c{}:1|c\n",
                        (index * args.lines_per_datagram + line) % args.series
                    )
                })
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    let threads = args.threads.clamp(1, args.sockets.max(1));
    let per_thread_rate = args.rate as f64 / args.lines_per_datagram as f64 / threads as f64;
    let duration = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..threads)
        .map(|number| {
            let datagrams = datagrams.clone();
            let target = args.target.clone();
            // Thread n sends from sockets n, n + threads, n + 2 * threads...
            let sockets = (number..args.sockets.max(1)).step_by(threads).count();
            std::thread::spawn(move || send(&target, &datagrams, number, sockets, per_thread_rate, duration))
        })
        .collect();
    let (mut sent, mut failed) = (0u64, 0u64);
    for thread in threads {
        let (ok, errors) = thread.join().expect("sender thread");
        sent += ok;
        failed += errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let lines = sent * args.lines_per_datagram as u64;
    println!(
        "sent_lines={lines} sent_datagrams={sent} failed_datagrams={failed} seconds={elapsed:.2} rate={:.0}",
        lines as f64 / elapsed
    );
}

/// Sends `rate` datagrams/s for `duration` from `sockets` sockets, one
/// `sendmmsg` call from each in turn, starting at datagram `offset` of the
/// cycle; returns (sent, failed) datagrams.
fn send(
    target: &str,
    datagrams: &[Vec<u8>],
    offset: usize,
    sockets: usize,
    rate: f64,
    duration: Duration,
) -> (u64, u64) {
    let sockets: Vec<UdpSocket> = (0..sockets)
        .map(|_| {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("sender socket");
            socket.connect(target).expect("target address");
            socket
        })
        .collect();
    let mut iovecs: Vec<libc::iovec> = (0..PER_CALL)
        .map(|_| libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all zero is a valid (empty) value.
    let mut headers: Vec<libc::mmsghdr> = (0..PER_CALL).map(|_| unsafe { std::mem::zeroed() }).collect();
    let (mut next, mut sent, mut failed, mut turn) = (offset, 0u64, 0u64, 0usize);
    let started = Instant::now();
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let count = (due.saturating_sub(sent + failed) as usize).min(PER_CALL);
        if count == 0 {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        for index in 0..count {
            let datagram = &datagrams[(next + index) % datagrams.len()];
            iovecs[index].iov_base = datagram.as_ptr() as *mut libc::c_void;
            iovecs[index].iov_len = datagram.len();
            headers[index].msg_hdr.msg_iov = &mut iovecs[index];
            headers[index].msg_hdr.msg_iovlen = 1;
        }
        let socket = &sockets[turn % sockets.len()];
        turn += 1;
        // SAFETY: `count` headers, each pointing at one live iovec over a live datagram.
        let done = unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), count as _, 0) };
        if done < 0 {
            // ENOBUFS / ECONNREFUSED: this datagram is lost on the sender's side; counted, not retried.
            failed += 1;
            next += 1;
            continue;
        }
        sent += done as u64;
        next += done as usize;
    }
    (sent, failed)
}
