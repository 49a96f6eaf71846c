#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conclave_resp::fuzzing::requests(data));
