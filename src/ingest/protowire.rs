//! A zero-allocation reader of the protobuf wire format. Decoders walk a
//! message's fields as borrowed slices with it, so they can count entries and
//! check shapes before allocating anything for them (see `budget`).

use thiserror::Error;

/// Why bytes are not a protobuf message. Offsets count from the start of the
/// message being read.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside a field.
    #[error("truncated field at byte {0}")]
    Truncated(usize),
    /// A varint longer than 10 bytes.
    #[error("varint longer than 10 bytes at byte {0}")]
    Varint(usize),
    /// A wire type protobuf 3 does not use here (groups, or 6 and 7).
    #[error("unsupported wire type {wire_type} at byte {at}")]
    WireType {
        /// The wire type.
        wire_type: u8,
        /// Where its tag starts.
        at: usize,
    },
    /// Field number 0.
    #[error("field number 0 at byte {0}")]
    FieldZero(usize),
    /// A known field sent with a wire type other than its declared one.
    #[error("field {field} has wire type {wire_type}, expected {expected}")]
    Mismatch {
        /// The field number.
        field: u32,
        /// Wire type sent.
        wire_type: u8,
        /// Wire type of the field's declared type.
        expected: u8,
    },
    /// A string field that is not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    Utf8(u32),
}

/// One field's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1 (`double`, `fixed64`).
    Fixed64(u64),
    /// Wire type 2: a string, bytes, a sub-message or a packed list.
    Bytes(&'a [u8]),
    /// Wire type 5 (`float`, `fixed32`).
    Fixed32(u32),
}

impl<'a> Value<'a> {
    fn wire_type(self) -> u8 {
        match self {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        }
    }

    fn mismatch(self, field: u32, expected: u8) -> WireError {
        WireError::Mismatch {
            field,
            wire_type: self.wire_type(),
            expected,
        }
    }

    /// The payload of a length-delimited field.
    pub fn bytes(self, field: u32) -> Result<&'a [u8], WireError> {
        match self {
            Value::Bytes(bytes) => Ok(bytes),
            other => Err(other.mismatch(field, 2)),
        }
    }

    /// The payload of a `string` field.
    pub fn str(self, field: u32) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes(field)?).map_err(|_| WireError::Utf8(field))
    }

    /// A varint field (`int64`, `uint64`, `int32`, enums).
    pub fn varint(self, field: u32) -> Result<u64, WireError> {
        match self {
            Value::Varint(value) => Ok(value),
            other => Err(other.mismatch(field, 0)),
        }
    }

    /// A `double` field.
    pub fn double(self, field: u32) -> Result<f64, WireError> {
        match self {
            Value::Fixed64(bits) => Ok(f64::from_bits(bits)),
            other => Err(other.mismatch(field, 1)),
        }
    }
}

/// The fields of one message, in wire order. Unknown fields are yielded too;
/// callers skip what they do not know, as protobuf requires.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Walks the fields of `message`.
pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields { bytes: message, at: 0 }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.at;
        let mut value = 0u64;
        for shift in 0..10 {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(WireError::Truncated(start));
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::Varint(start))
    }

    fn take(&mut self, length: usize, start: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(WireError::Truncated(start))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), WireError> {
        let start = self.at;
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError::FieldZero(start))?;
        if field == 0 {
            return Err(WireError::FieldZero(start));
        }
        let value = match (key & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8, start)?.try_into().unwrap_or_default())),
            2 => {
                let length = usize::try_from(self.varint()?).map_err(|_| WireError::Truncated(start))?;
                Value::Bytes(self.take(length, start)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4, start)?.try_into().unwrap_or_default())),
            wire_type => return Err(WireError::WireType { wire_type, at: start }),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            // Nothing after a broken field can be read.
            self.at = self.bytes.len();
        }
        Some(item)
    }
}

/// How many times `field` occurs in `message` (a repeated field's entries),
/// checking the whole message is well formed.
pub fn count(message: &[u8], field: u32) -> Result<usize, WireError> {
    let mut count = 0;
    for item in fields(message) {
        if item?.0 == field {
            count += 1;
        }
    }
    Ok(count)
}

/// A `Label { string name = 1; string value = 2; }`, the label message of
/// both tailfold's gRPC API and Prometheus remote write, borrowed.
pub fn label(message: &[u8]) -> Result<(&str, &str), WireError> {
    let (mut name, mut value) = ("", "");
    for field in fields(message) {
        match field? {
            (1, field) => name = field.str(1)?,
            (2, field) => value = field.str(2)?,
            _ => {}
        }
    }
    Ok((name, value))
}

/// Elements of a packed varint list: one per byte that ends a varint.
pub fn packed_varints(list: &[u8]) -> usize {
    list.iter().filter(|byte| **byte < 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_wire_type_and_refuses_broken_fields() {
        // field 1 varint 300, field 2 double 1.5, field 3 "hi", field 4 fixed32 7.
        let mut message = vec![0x08, 0xac, 0x02, 0x11];
        message.extend_from_slice(&1.5f64.to_le_bytes());
        message.extend_from_slice(&[0x1a, 2, b'h', b'i', 0x25, 7, 0, 0, 0]);
        let read: Vec<(u32, Value)> = fields(&message).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            read,
            vec![
                (1, Value::Varint(300)),
                (2, Value::Fixed64(1.5f64.to_bits())),
                (3, Value::Bytes(b"hi")),
                (4, Value::Fixed32(7)),
            ]
        );
        assert_eq!(read[2].1.str(3), Ok("hi"));
        assert_eq!(
            read[0].1.str(1),
            Err(WireError::Mismatch {
                field: 1,
                wire_type: 0,
                expected: 2
            })
        );
        assert_eq!(count(&message, 3), Ok(1));

        assert_eq!(fields(&[0x1a, 5, b'a']).next(), Some(Err(WireError::Truncated(0))));
        assert_eq!(
            fields(&[0x0b]).next(),
            Some(Err(WireError::WireType { wire_type: 3, at: 0 }))
        );
        assert_eq!(fields(&[0x00, 0x00]).next(), Some(Err(WireError::FieldZero(0))));
        let long = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(fields(&long).next(), Some(Err(WireError::Varint(1))));
        assert_eq!(fields(&[0x1a, 0xff]).next(), Some(Err(WireError::Truncated(1))));
        assert_eq!(
            fields(&[0x1a, 0xc0, 0xbb, 0x78]).next(),
            Some(Err(WireError::Truncated(0)))
        );
        let mut broken = fields(&[0x1a, 5, b'a']);
        assert!(broken.next().unwrap().is_err());
        assert_eq!(broken.next(), None);
        assert_eq!(packed_varints(&[1, 0x80, 1, 2]), 3);
    }
}
