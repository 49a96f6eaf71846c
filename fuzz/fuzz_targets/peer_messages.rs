#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conclave_consensus::fuzzing::peer_messages(data));
