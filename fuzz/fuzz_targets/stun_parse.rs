#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sesame_proto::fuzz_targets::stun_parse(data));
