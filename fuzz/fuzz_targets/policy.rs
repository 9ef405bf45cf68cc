//! Fuzz target `policy`: runs [`keygate_fuzz::policy::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::policy::check(data));
