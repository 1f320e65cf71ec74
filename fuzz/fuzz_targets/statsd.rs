//! Fuzz target: hostile input through `tailfold::fuzzing::statsd`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailfold::fuzzing::statsd(data));
