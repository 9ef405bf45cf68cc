//! Fuzz target `settings`: runs [`keygate_fuzz::settings::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::settings::check(data));
