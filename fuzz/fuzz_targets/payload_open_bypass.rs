#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sesame_proto::fuzz_targets::payload_open_bypass(data));
