//! Fuzz target: hostile input through `tailfold::fuzzing::otlp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailfold::fuzzing::otlp(data));
