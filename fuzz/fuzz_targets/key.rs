//! Fuzz target `key`: runs [`keygate_fuzz::key::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::key::check(data));
