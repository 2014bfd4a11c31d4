//! `flannelctl`: leases, reservations and the network config in etcd, and the local
//! flanneld's state. Everything lives in `flannel_rs::ctl`; `--help` lists the commands
//! and the exit statuses.

use std::process::ExitCode;

fn main() -> ExitCode {
    flannel_rs::ctl::main(std::env::args_os())
}
