//! Fuzz target `headers`: runs [`keygate_fuzz::headers::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::headers::check(data));
