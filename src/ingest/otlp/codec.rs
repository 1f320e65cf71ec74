//! The protobuf codec of the OTLP gRPC services: prost's, except that a body
//! that does not decode is answered INVALID_ARGUMENT (what OTLP asks for bad
//! data: not retryable) instead of gRPC's generic INTERNAL.

use std::marker::PhantomData;

use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = OtlpDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        OtlpDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder with decode failures turned into INVALID_ARGUMENT.
#[derive(Debug)]
pub struct OtlpDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for OtlpDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!("invalid protobuf: {}", status.message())),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}
