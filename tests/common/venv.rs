//! The tests' own Python tools, in the venv scripts/test.sh makes (`.venv`): `moto_server`
//! (the EC2 API emulator) and a Python with `prometheus_client`.

use std::path::PathBuf;

/// Where `moto_server` is: `$MOTO_SERVER`, else the venv scripts/test.sh makes.
pub fn moto_server() -> Result<PathBuf, String> {
    match std::env::var_os("MOTO_SERVER") {
        Some(p) => existing(PathBuf::from(p), "set by MOTO_SERVER"),
        None => venv_bin("moto_server"),
    }
}

/// The Python of the venv scripts/test.sh makes (moto, prometheus-client).
pub fn venv_python() -> Result<PathBuf, String> {
    venv_bin("python3")
}

/// A program in the venv scripts/test.sh makes (`.venv/bin`).
fn venv_bin(name: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    existing(
        path,
        "scripts/test.sh installs moto[server] and prometheus-client into .venv",
    )
}

fn existing(path: PathBuf, hint: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} not found ({hint})", path.display()))
    }
}
