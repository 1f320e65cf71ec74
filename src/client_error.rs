//! How the command-line clients (`tailfold loadgen`, `tailfold top`) word a
//! failed connection: what went wrong at the socket, and the flag that says
//! where to connect, instead of an HTTP library's "error sending request".

use std::error::Error;
use std::io::ErrorKind;

/// `error` (and its sources) as one line a newcomer can act on: a refused,
/// timed-out or unresolvable connection is named as such with a hint at
/// `flag` (e.g. `--target`); anything else keeps its whole chain of causes.
pub fn describe(error: &(dyn Error + 'static), flag: &str) -> String {
    let mut causes = Vec::new();
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            let what = match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused",
                ErrorKind::TimedOut => "connection timed out",
                ErrorKind::ConnectionReset => "connection reset",
                ErrorKind::AddrNotAvailable | ErrorKind::NotFound => "address not found",
                _ => "",
            };
            if !what.is_empty() {
                return format!("{what}: is tailfold running and listening there? {flag} sets the address");
            }
        }
        let text = cause.to_string();
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        current = cause.source();
    }
    causes.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_connection_is_named_with_the_flag_and_other_errors_keep_their_causes() {
        let refused = Wrapper(std::io::Error::from(ErrorKind::ConnectionRefused));
        let message = describe(&refused, "--target");
        assert!(message.starts_with("connection refused"), "{message}");
        assert!(message.contains("--target"), "{message}");
        let other = Wrapper(std::io::Error::other("tls handshake failed"));
        assert_eq!(
            describe(&other, "--target"),
            "error sending request: tls handshake failed"
        );
    }
}
