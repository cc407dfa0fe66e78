#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sesame_server::fuzz_targets::config_parse(data));
