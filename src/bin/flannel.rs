//! `flannel`: the CNI meta-plugin (container runtimes find it by `"type": "flannel"`).
//!
//! A thin shell around [`flannel_rs::cni::run`]: CNI environment and stdin in, the
//! result on stdout and exit status 0, or the spec's error JSON on stdout and exit
//! status 1. Diagnostics go to stderr, which runtimes log.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use flannel_rs::cni::{self, CniEnv, CniError};

fn main() -> ExitCode {
    let env = CniEnv::from_process();
    if env.command.is_empty() {
        // What skel does for a human running the binary by hand.
        eprint!("{}", cni::about());
        return ExitCode::SUCCESS;
    }
    let mut stdin = Vec::new();
    let result = if env.command == "VERSION" {
        // VERSION's stdin is optional and carries nothing we use.
        Ok(())
    } else {
        io::stdin()
            .read_to_end(&mut stdin)
            .map(drop)
            .map_err(CniError::ReadStdin)
    };
    let result = result.and_then(|()| cni::run(&env, &stdin, &mut io::stderr()));
    let (text, status) = match result {
        Ok(out) => (out, ExitCode::SUCCESS),
        Err(err) => (cni::error_json(&err, &stdin) + "\n", ExitCode::FAILURE),
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => status,
        Err(e) => {
            // The runtime cannot read our answer; say why where it may still look.
            eprintln!("flannel: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
