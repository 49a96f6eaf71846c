#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| conclave_storage::fuzzing::snapshot_file(data));
