//! Fuzz target: hostile input through `tailfold::fuzzing::rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tailfold::fuzzing::rules(data));
