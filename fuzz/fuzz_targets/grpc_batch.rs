//! Fuzz target: hostile input through `tailfold::fuzzing::grpc_batch`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailfold::fuzzing::grpc_batch(data));
