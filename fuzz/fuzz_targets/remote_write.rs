//! Fuzz target: hostile input through `tailfold::fuzzing::remote_write`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailfold::fuzzing::remote_write(data));
