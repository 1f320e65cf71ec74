//! Free loopback ports for processes a test starts. They are picked below the
//! kernel's ephemeral range, so outgoing connections cannot take one between
//! the pick and the bind, and reserved across test processes with a lock file
//! held until the test process exits, so a port stays this test's while the
//! process holding it is killed and started again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;

use rand::Rng;

/// Ports handed out by this test process, with the lock file reserving each
/// (kept open, so the reservation lasts as long as the process).
static GIVEN: Mutex<Option<HashMap<u16, File>>> = Mutex::new(None);

/// The lowest port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Where the lock files live: one per port, shared by every test process
/// of every suite on the machine.
fn reservations_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("tailfold-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    dir
}

/// The lock file reserving `port` (`flock`ed by the test process that holds it).
pub fn reservation_file(port: u16) -> PathBuf {
    reservations_dir().join(port.to_string())
}

/// The lock file of `port`, locked by this process; `None` when another
/// test process holds it.
///
/// Without it, a port freed by `kill -9` of one test's instance could be
/// picked by a test running beside it before the instance starts again
/// (the restart then fails with "address already in use").
fn reserve(port: u16) -> Option<File> {
    let path = reservation_file(port);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    // `flock` by hand: `File::try_lock` is newer than the crate's MSRV.
    // SAFETY: `flock` on a file descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// A loopback port nothing listens on now, below the ephemeral range, not
/// handed out before by this process and reserved against every other test
/// process until this one exits.
pub fn unused_port() -> u16 {
    let high = ephemeral_low();
    let low = 10_000.min(high.saturating_sub(1_000));
    let mut rng = rand::rng();
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashMap::new);
    for _ in 0..1_000 {
        let port = rng.random_range(low..high);
        if given.contains_key(&port) {
            continue;
        }
        let Some(reservation) = reserve(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port, reservation);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high} after 1,000 tries");
}
