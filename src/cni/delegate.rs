//! Running the delegate plugin: find it in `CNI_PATH`, run it with the delegate config
//! on stdin and our CNI environment, and turn its output into a result or an error.
//!
//! Mirrors libcni's `invoke` package (`FindInPath`, `RawExec.ExecPlugin`, `pluginErr`),
//! which upstream's `invoke.DelegateAdd`/`DelegateDel` use.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::time::Duration;

use super::types::{CniEnv, CniError, Command, PluginError};

/// How often a plugin that is being written (`ETXTBSY`) is retried, and how long to
/// wait between tries: libcni's values.
const BUSY_RETRIES: u32 = 5;
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// `ETXTBSY` on Linux: the plugin file is still open for writing (being installed).
const ETXTBSY: i32 = 26;

/// Finds plugin `name` in the colon-separated `cni_path`: the first regular file (after
/// following symlinks) `<dir>/<name>`. Empty entries are skipped rather than meaning the
/// working directory. `name` must be a bare file name, so a config can never run an
/// arbitrary path.
pub fn find_in_path(name: &str, cni_path: &str, command: Command) -> Result<PathBuf, CniError> {
    let bad = |reason: String| CniError::BadPluginName { command, reason };
    if name.is_empty() {
        return Err(bad("no plugin name provided".into()));
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(bad(format!("invalid plugin name: {name}")));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    dirs.iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .ok_or_else(|| CniError::PluginNotFound {
            command,
            plugin: name.to_owned(),
            paths: dirs.iter().map(|d| (*d).to_owned()).collect(),
        })
}

/// Runs `plugin` for `command` with `conf` on stdin and `env` (with `CNI_COMMAND` set to
/// `command`) added to our own environment. On success returns its stdout and copies
/// its stderr to `log`; on failure returns its error JSON unchanged when it printed one.
pub fn exec(
    plugin: &Path,
    command: Command,
    conf: &[u8],
    env: &CniEnv,
    log: &mut dyn Write,
) -> Result<Vec<u8>, CniError> {
    let out =
        run_retrying_busy(plugin, command, conf, env).map_err(|source| CniError::PluginExec {
            command,
            path: plugin.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(plugin_error(&out));
    }
    if !out.stderr.is_empty() {
        // Diagnostics only: a failed write must not fail the operation.
        let _ = log.write_all(&out.stderr);
    }
    Ok(out.stdout)
}

/// Runs the plugin, retrying while the kernel says its file is busy being written.
fn run_retrying_busy(
    plugin: &Path,
    command: Command,
    conf: &[u8],
    env: &CniEnv,
) -> io::Result<Output> {
    let mut tries = 0;
    loop {
        match run_once(plugin, command, conf, env) {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(BUSY_WAIT);
            }
            other => return other,
        }
    }
}

/// One run: stdin is written from a second thread, so a plugin that prints a lot
/// before reading its input cannot deadlock us.
fn run_once(plugin: &Path, command: Command, conf: &[u8], env: &CniEnv) -> io::Result<Output> {
    let mut cmd = Process::new(plugin);
    cmd.env("CNI_COMMAND", command.as_str());
    for (name, value) in env.vars() {
        if value.is_empty() {
            cmd.env_remove(name);
        } else {
            cmd.env(name, value);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child.stdin.take();
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A plugin may exit without reading stdin (EPIPE); its exit status and
                // output tell what happened, so the write error itself is not reported.
                let _ = stdin.write_all(conf);
            }
        });
        child.wait_with_output()
    })
}

/// The error a failed plugin reported: its stdout error JSON as is; otherwise a
/// message built from its stderr or exit status (libcni's `pluginErr`).
fn plugin_error(out: &Output) -> CniError {
    let synthesized = |msg: String| PluginError {
        code: super::types::ErrorCode::INTERNAL,
        msg,
        details: String::new(),
    };
    let err = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        if out.stderr.is_empty() {
            synthesized(format!(
                "netplugin failed with no error message: {}",
                out.status
            ))
        } else {
            synthesized(format!(
                "netplugin failed: {:?}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    } else {
        serde_json::from_slice::<PluginError>(&out.stdout).unwrap_or_else(|e| {
            synthesized(format!(
                "netplugin failed but error parsing its diagnostic message {:?}: {e}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    };
    CniError::PluginFailed(err)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cni::types::ErrorCode;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn find_searches_each_dir_in_order_and_skips_non_files() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::create_dir(a.path().join("bridge")).unwrap();
        let want = script(b.path(), "bridge", "true");
        let path = format!("{}::{}", a.path().display(), b.path().display());
        assert_eq!(find_in_path("bridge", &path, Command::Add).unwrap(), want);
        let err = find_in_path("macvlan", &path, Command::Add).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "failed to delegate add: failed to find plugin \"macvlan\" in path [{} {}]",
                a.path().display(),
                b.path().display()
            )
        );
    }

    #[test]
    fn find_refuses_names_that_are_paths() {
        for (name, msg) in [
            ("", "failed to delegate del: no plugin name provided"),
            (
                "../bin/sh",
                "failed to delegate del: invalid plugin name: ../bin/sh",
            ),
            (
                "/bin/sh",
                "failed to delegate del: invalid plugin name: /bin/sh",
            ),
            ("..", "failed to delegate del: invalid plugin name: .."),
        ] {
            let err = find_in_path(name, "/usr/lib/cni", Command::Del).unwrap_err();
            assert_eq!(
                (err.code(), err.to_string()),
                (ErrorCode::INVALID_NETWORK_CONFIG, msg.to_owned())
            );
        }
    }

    #[test]
    fn exec_passes_conf_and_env_and_returns_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "echo", "echo \"$CNI_COMMAND $CNI_CONTAINERID ${CNI_NETNS-unset} $CNI_PATH\"; cat; echo oops >&2");
        let env = CniEnv {
            container_id: "c1".into(),
            path: "/x".into(),
            ..CniEnv::default()
        };
        let mut log = Vec::new();
        let out = exec(&p, Command::Del, b"{\"a\":1}", &env, &mut log).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DEL c1 unset /x\n{\"a\":1}"
        );
        assert_eq!(log, b"oops\n");
    }

    #[test]
    fn failures_pass_the_plugins_error_through_or_describe_it() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            (
                "echo '{\"code\":3,\"msg\":\"no such container\",\"details\":\"d\"}'; exit 1",
                3,
                "no such container",
                "d",
            ),
            (
                "echo boom >&2; exit 2",
                999,
                "netplugin failed: \"boom\\n\"",
                "",
            ),
            (
                "exit 3",
                999,
                "netplugin failed with no error message: exit status: 3",
                "",
            ),
            (
                "echo notjson; exit 1",
                999,
                "netplugin failed but error parsing its diagnostic message \"notjson\\n\"",
                "",
            ),
        ];
        for (i, (body, code, msg, details)) in rows.into_iter().enumerate() {
            let p = script(dir.path(), &format!("p{i}"), body);
            let err =
                exec(&p, Command::Add, b"{}", &CniEnv::default(), &mut Vec::new()).unwrap_err();
            assert_eq!(err.code(), ErrorCode(code), "{body}");
            assert!(err.to_string().starts_with(msg), "{body}: {err}");
            assert_eq!(err.details(), details);
        }
    }

    #[test]
    fn plugin_that_ignores_a_large_stdin_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "quiet", "echo '{}'");
        let big = vec![b' '; 1 << 20];
        assert_eq!(
            exec(&p, Command::Add, &big, &CniEnv::default(), &mut Vec::new()).unwrap(),
            b"{}\n"
        );
    }

    #[test]
    fn unrunnable_plugin_is_an_exec_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("noexec");
        std::fs::write(&p, "x").unwrap();
        let err = exec(&p, Command::Add, b"{}", &CniEnv::default(), &mut Vec::new()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::INTERNAL);
        assert!(err.to_string().contains("cannot run"), "{err}");
    }
}
