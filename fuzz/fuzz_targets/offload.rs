#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flannel_rs::fuzzing::offload(data));
