//! Build script: the commit the binaries are built from, for `--version` and `/status`.
//!
//! Sets `FLANNEL_RS_COMMIT` for the crate: the `FLANNEL_RS_COMMIT` variable when given (a
//! build from a source tarball can name its commit), else `git rev-parse --short=12 HEAD`,
//! else `unknown` (no git, or not a checkout).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FLANNEL_RS_COMMIT");
    let commit = std::env::var("FLANNEL_RS_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FLANNEL_RS_COMMIT={}", commit.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Run again when HEAD moves: HEAD itself (a checkout), the branch it names (a commit),
    // and packed-refs (a branch packed by git gc). In a worktree these live in different
    // directories; git names them. Only files that exist: cargo runs a build script whose
    // watched file is missing every time.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        match git(&["rev-parse", "--git-path", &name]) {
            Some(path) if std::path::Path::new(&path).exists() => {
                println!("cargo:rerun-if-changed={path}");
            }
            _ => {}
        }
    }
    Some(commit)
}
