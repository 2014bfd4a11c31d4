//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so CI exercises the same checks on
//! stable Rust. Each takes untrusted bytes and panics only when an invariant
//! is broken (never because the input is bad).

use crate::config::NetworkConfig;
use crate::subnet::env::SubnetEnv;
use crate::subnet::lease::{LeaseAttrs, SubnetKey};

/// Network config JSON: parsing never panics; a valid config's ranges are sane.
pub fn net_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = NetworkConfig::parse(text) {
        for r in [c.ipv4, c.ipv6].into_iter().flatten() {
            assert!(r.subnet_len >= r.network.prefix_len() + 2);
            assert!(r.network.contains(&r.min) && r.network.contains(&r.max));
            assert!(r.len() >= 1);
        }
    }
}

/// Lease values and keys written by other nodes: parse, and a parsed value
/// re-serializes to something that parses back to the same attributes.
pub fn lease_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(attrs) = LeaseAttrs::from_json(text) {
        let again = LeaseAttrs::from_json(&attrs.to_json()).expect("our own output parses");
        assert_eq!(again, attrs);
    }
    if let Ok(key) = SubnetKey::parse(text) {
        assert_eq!(SubnetKey::parse(&key.to_string()).expect("our own key parses"), key);
    }
}

/// subnet.env text: parse, render, parse again gives the same values.
pub fn subnet_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(env) = SubnetEnv::parse(text) {
        let again = SubnetEnv::parse(&env.render()).expect("our own output parses");
        assert_eq!(again, env);
    }
}
