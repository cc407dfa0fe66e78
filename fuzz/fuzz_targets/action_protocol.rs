#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sesame_server::fuzz_targets::action_protocol(data));
