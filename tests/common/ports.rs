//! Free loopback ports for processes a test starts. They are picked below the
//! kernel's ephemeral range, so the outgoing connections of the many processes
//! a suite runs cannot take a port between the pick and the process's bind.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use rand::Rng;

/// Ports already handed out by this test process (a released port is not
/// handed out twice, even before its process binds it).
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The lowest port of the kernel's ephemeral range (32768 if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port nothing listens on now, below the ephemeral range and
/// not handed out before by this process.
pub fn unused_port() -> u16 {
    let high = ephemeral_low();
    let low = 10_000.min(high.saturating_sub(1_000));
    let mut rng = rand::rng();
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1_000 {
        let port = rng.random_range(low..high);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high} after 1,000 tries");
}
