//! Writes the files of the Debian package that come from the clap definitions, so they
//! cannot drift from `--help`: the man pages flanneld(8) and flannelctl(8), bash
//! completion for both, and `/etc/default/flanneld` with every `FLANNELD_*` variable
//! commented out at its default.
//!
//!   cargo run --example package-assets -- OUT_DIR
//!
//! An example rather than a subcommand or a feature of the daemon: clap_mangen and
//! clap_complete stay dev-dependencies, out of the shipped binaries and out of the release
//! build (a cargo feature would have rebuilt the library with other features). It builds
//! with the test suite's `cargo build --all-targets`, so it keeps compiling; scripts/package.sh
//! runs it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use flannel_rs::cli::Cli;
use flannel_rs::ctl::args::Ctl;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).unwrap_or_else(|| {
        eprintln!("usage: package-assets OUT_DIR");
        std::process::exit(2)
    }));
    for dir in ["man", "completions", "default"] {
        std::fs::create_dir_all(out.join(dir))?;
    }
    let daemon = Cli::command().version(flannel_rs::cli::VERSION);
    let ctl = Ctl::command();
    for cmd in [&daemon, &ctl] {
        let name = cmd.get_name().to_owned();
        man_page(cmd.clone(), &out.join("man").join(format!("{name}.8")))?;
        let mut file = std::fs::File::create(out.join("completions").join(&name))?;
        clap_complete::generate(Shell::Bash, &mut cmd.clone(), &name, &mut file);
    }
    std::fs::write(out.join("default").join("flanneld"), default_file(&daemon))?;
    println!("{}", out.display());
    Ok(())
}

/// A section-8 page (system administration), as Debian files daemons.
fn man_page(cmd: clap::Command, path: &Path) -> std::io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .manual("flannel-rs")
        .render(&mut buf)?;
    std::fs::write(path, buf)
}

/// `/etc/default/flanneld`: one commented line per variable, at its default, after its
/// help text.
fn default_file(cmd: &clap::Command) -> String {
    let mut text = String::from(
        "# flanneld's settings, read by flanneld.service (EnvironmentFile=).\n\
         #\n\
         # Every flag of flanneld(8) may be set here as its FLANNELD_* variable; each is\n\
         # shown below, commented out, at its default. A flag given in FLANNELD_ARGS wins\n\
         # over its variable. Changes take effect at `systemctl restart flanneld` (a reload\n\
         # re-executes the daemon with the environment it started with).\n\
         #\n\
         # flannelctl(8) reads the same FLANNELD_ETCD_* variables:\n\
         #   set -a; . /etc/default/flanneld; set +a; flannelctl leases\n\
         \n\
         # Extra command-line flags, e.g. \"--iface=eth1 --ip-masq\".\n\
         #FLANNELD_ARGS=\"\"\n",
    );
    for arg in cmd.get_arguments() {
        let Some(var) = arg.get_env().and_then(|v| v.to_str()) else {
            continue;
        };
        if var == "FLANNELD_VERSION" {
            continue;
        }
        text.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 86) {
            let _ = writeln!(text, "# {line}");
        }
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let _ = writeln!(text, "#{var}=\"{}\"", default.join(","));
    }
    text
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
