//! Fuzz target `path`: runs [`keygate_fuzz::path::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::path::check(data));
