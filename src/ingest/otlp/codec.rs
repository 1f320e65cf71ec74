//! The protobuf codec of the OTLP gRPC services: prost's, except that a
//! request is first checked against its memory bound (`bounds`), and a body
//! that does not decode or is over its bound is answered INVALID_ARGUMENT
//! (what OTLP asks for bad data: not retryable) instead of gRPC's INTERNAL.

use std::marker::PhantomData;

use bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstEncoder};

use super::bounds::{check, Bounded};

/// The codec `build.rs` names for the OTLP services.
#[derive(Debug, Clone, Copy)]
pub struct OtlpCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for OtlpCodec<T, U> {
    fn default() -> Self {
        OtlpCodec(PhantomData)
    }
}

impl<T, U> Codec for OtlpCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: Bounded + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = OtlpDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        OtlpDecoder(PhantomData)
    }
}

/// prost's decoder behind the memory bound, failures answered INVALID_ARGUMENT.
#[derive(Debug)]
pub struct OtlpDecoder<U>(PhantomData<U>);

impl<U: Bounded> Decoder for OtlpDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A slice of tonic's buffer, not a copy.
        let bytes = buf.copy_to_bytes(buf.remaining());
        check::<U>(&bytes).map_err(|error| Status::invalid_argument(error.to_string()))?;
        U::decode(bytes)
            .map(Some)
            .map_err(|error| Status::invalid_argument(format!("invalid protobuf: {error}")))
    }
}
