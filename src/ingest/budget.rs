//! The memory bound of decoding one request: what a decoder builds from a
//! request (series, labels, points, histograms) is charged here before it is
//! allocated, and the request is refused once the charge passes a small
//! multiple of its decompressed size, whatever the request's shape.

use thiserror::Error;

/// Bytes of decoded structures a request may take per byte of its
/// decompressed body. With the body itself, a request holds at most
/// `DECODED_BYTES_PER_BYTE + 1` times its size while it is decoded.
pub const DECODED_BYTES_PER_BYTE: usize = 3;

/// Decoded bytes every request may take whatever its size, so that small
/// requests of small series (whose decoded form is larger than their wire
/// form) always pass.
pub const DECODED_BYTES_FLOOR: usize = 1 << 20;

/// A request's decoded form would pass its budget.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "request of {size} bytes decodes to more than {limit} bytes ({per_byte}x its size plus 1 MiB): \
     too many small entries; send fewer series, labels or points per request"
)]
pub struct OverBudget {
    /// Decompressed size of the request.
    pub size: usize,
    /// The budget.
    pub limit: usize,
    /// Decoded bytes allowed per byte of the request.
    pub per_byte: usize,
}

/// What a request may still allocate while it is decoded.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    size: usize,
    per_byte: usize,
    limit: usize,
    used: usize,
}

impl DecodeBudget {
    /// The budget of a request whose decompressed body is `size` bytes.
    pub fn for_request(size: usize) -> Self {
        Self::with_multiple(size, DECODED_BYTES_PER_BYTE)
    }

    /// A budget of `per_byte` decoded bytes per byte of a `size`-byte body, plus the floor.
    pub fn with_multiple(size: usize, per_byte: usize) -> Self {
        DecodeBudget {
            size,
            per_byte,
            limit: size.saturating_mul(per_byte).saturating_add(DECODED_BYTES_FLOOR),
            used: 0,
        }
    }

    /// Charges `bytes` about to be allocated and kept.
    pub fn charge(&mut self, bytes: usize) -> Result<(), OverBudget> {
        self.check(bytes)?;
        self.used += bytes;
        Ok(())
    }

    /// Checks that `bytes` allocated for a moment (and freed before the next
    /// charge) fit beside what is kept.
    pub fn check(&self, bytes: usize) -> Result<(), OverBudget> {
        if self.used.saturating_add(bytes) > self.limit {
            return Err(OverBudget {
                size: self.size,
                limit: self.limit,
                per_byte: self.per_byte,
            });
        }
        Ok(())
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_multiple_plus_floor() {
        let mut budget = DecodeBudget::for_request(1000);
        let limit = 3000 + DECODED_BYTES_FLOOR;
        budget.charge(limit - 10).unwrap();
        assert!(budget.check(10).is_ok());
        let error = budget.charge(11).unwrap_err();
        assert_eq!(
            error,
            OverBudget {
                size: 1000,
                limit,
                per_byte: DECODED_BYTES_PER_BYTE
            }
        );
        assert!(error.to_string().contains("request of 1000 bytes decodes to more than"));
        assert_eq!(budget.used(), limit - 10);
    }
}
