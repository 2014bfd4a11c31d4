//! Replays every checked-in fuzz corpus file through the same entry points the
//! fuzz targets use, so CI exercises them on stable Rust.
//!
//! Tier: pure (no root, no services).

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "corpus {target} is empty");
}

#[test]
fn net_conf_corpus() {
    replay("net_conf", flannel_rs::fuzzing::net_conf);
}

#[test]
fn lease_json_corpus() {
    replay("lease_json", flannel_rs::fuzzing::lease_json);
}

#[test]
fn subnet_env_corpus() {
    replay("subnet_env", flannel_rs::fuzzing::subnet_env);
}

#[test]
fn packet_corpus() {
    replay("packet", flannel_rs::fuzzing::packet);
}

#[test]
fn offload_corpus() {
    replay("offload", flannel_rs::fuzzing::offload);
}
