//! Fuzz target `codec`: runs [`keygate_fuzz::codec::check`] on every input.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::codec::check(data));
