//! Running the extension backend's commands (`PreStartupCommand`, `SubnetAddCommand`, …).
//!
//! Since flannel v0.28.2 (commit 08bc9a4c) upstream runs these commands **without a shell**:
//! the configured string is split on whitespace, `$VAR` / `${VAR}` in each word are expanded
//! from the process environment plus the backend's variables (Go's `os.Expand` rules), and the
//! first word is executed directly. Quotes, `;`, `&&`, pipes and `$(…)` therefore mean nothing;
//! operators who need them point the command at a script. We do the same, so a command line
//! behaves identically under both daemons and a variable's value (a remote host's address, say)
//! can never inject shell syntax.
//!
//! The child gets the daemon's environment plus the variables, `stdin` + `"\n"` on its standard
//! input (upstream writes exactly that), and one pipe for both stdout and stderr: upstream uses
//! Go's `CombinedOutput`, and the pre-startup command's *combined* output becomes the lease's
//! `BackendData`, so the two streams must interleave the same way.
//!
//! # Host state owned by this module
//! Only child processes: each is waited for (or killed on timeout / drop) before `run` returns.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// At most this much output is kept (an etcd value is limited to 1.5 MiB anyway).
pub const MAX_OUTPUT: usize = 1 << 20;

/// How long to keep reading output after the command exited. A command that leaves a
/// background process holding the pipe open would otherwise hang the caller forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook<'a> {
    /// Which option the command comes from, for messages (`SubnetAddCommand`).
    pub name: &'static str,
    /// The command line as configured.
    pub command: &'a str,
    /// Variables added to the environment and available for expansion.
    pub vars: Vec<(&'static str, String)>,
    /// Written to the child's stdin, followed by a newline.
    pub stdin: &'a str,
    /// Kill the command after this long (`None`: wait for it, as upstream always does).
    pub timeout: Option<Duration>,
}

/// What a successful command printed (stdout and stderr interleaved, trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutput {
    pub output: String,
    /// More than [`MAX_OUTPUT`] bytes were printed; `output` holds the first part only.
    pub truncated: bool,
}

/// Why a command did not succeed. The messages name the option and the command line.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{name}: the command {command:?} is empty after splitting on whitespace")]
    Empty { name: &'static str, command: String },
    #[error("{name}: cannot start {program:?} (from {command:?})")]
    Spawn {
        name: &'static str,
        program: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {command:?} failed ({status}); output: {output:?}")]
    Failed {
        name: &'static str,
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{name}: {command:?} did not finish within {after:?} and was killed; output so far: {output:?}")]
    TimedOut {
        name: &'static str,
        command: String,
        after: Duration,
        output: String,
    },
    #[error("{name}: waiting for {command:?}")]
    Wait {
        name: &'static str,
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// Expands `$NAME`, `${NAME}` and the one-character shell specials (`$1`, `$?`, …) in `s`
/// exactly as Go's `os.Expand` does: unknown names become empty, `${}` and an unterminated
/// `${` are dropped, and a `$` not followed by a name is kept.
pub fn go_expand(s: &str, mut lookup: impl FnMut(&str) -> String) -> String {
    fn special(c: u8) -> bool {
        matches!(
            c,
            b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
        )
    }
    fn alnum(c: u8) -> bool {
        c == b'_' || c.is_ascii_alphanumeric()
    }
    // Returns (name, bytes consumed after the '$'); mirrors Go's getShellName.
    fn shell_name(s: &[u8]) -> (&[u8], usize) {
        if s[0] == b'{' {
            if s.len() > 2 && special(s[1]) && s[2] == b'}' {
                return (&s[1..2], 3);
            }
            for i in 1..s.len() {
                if s[i] == b'}' {
                    if i == 1 {
                        return (&[], 2); // "${}" is bad syntax: eaten
                    }
                    return (&s[1..i], i + 1);
                }
            }
            return (&[], 1); // "${" without "}": the "{" is eaten
        }
        if special(s[0]) {
            return (&s[..1], 1);
        }
        let n = s.iter().take_while(|c| alnum(**c)).count();
        (&s[..n], n)
    }

    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut i, mut j) = (0, 0);
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            out.push_str(&s[i..j]);
            let (name, w) = shell_name(&b[j + 1..]);
            if name.is_empty() && w == 0 {
                out.push('$'); // "$" followed by no name: kept as is
            } else if !name.is_empty() {
                // Names are ASCII slices of a str, so this cannot fail.
                out.push_str(&lookup(std::str::from_utf8(name).unwrap_or_default()));
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    if i < b.len() {
        out.push_str(&s[i..]);
    }
    out
}

/// The argv a command line runs as: whitespace-split words, each expanded with `lookup`.
/// Splitting happens first, so a value containing spaces stays one argument.
pub fn argv(command: &str, mut lookup: impl FnMut(&str) -> String) -> Vec<String> {
    command
        .split_whitespace()
        .map(|w| go_expand(w, &mut lookup))
        .collect()
}

/// Runs `hook` and returns its output, or why it failed. The child is killed if this future
/// is dropped.
pub async fn run(hook: &Hook<'_>) -> Result<HookOutput, HookError> {
    let vars: HashMap<&str, &str> = hook.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = argv(hook.command, |name| {
        vars.get(name)
            .map(|v| (*v).to_owned())
            .or_else(|| std::env::var(name).ok())
            .unwrap_or_default()
    });
    let Some((program, rest)) = args.split_first() else {
        return Err(HookError::Empty {
            name: hook.name,
            command: hook.command.to_owned(),
        });
    };
    let spawn_err = |source| HookError::Spawn {
        name: hook.name,
        program: program.clone(),
        command: hook.command.to_owned(),
        source,
    };
    let wait_err = |source| HookError::Wait {
        name: hook.name,
        command: hook.command.to_owned(),
        source,
    };

    // One pipe for stdout and stderr, like Go's CombinedOutput.
    let (tx, mut rx) = tokio::net::unix::pipe::pipe().map_err(spawn_err)?;
    let out_fd: OwnedFd = tx.into_blocking_fd().map_err(spawn_err)?;
    let err_fd = out_fd.try_clone().map_err(spawn_err)?;
    let mut child = {
        // The Command holds our copies of the write end; it must be dropped right after the
        // spawn, or reading would never see end-of-file.
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest)
            .envs(hook.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out_fd))
            .stderr(Stdio::from(err_fd))
            .kill_on_drop(true);
        cmd.spawn().map_err(spawn_err)?
    };
    if let Some(mut stdin) = child.stdin.take() {
        let data = format!("{}\n", hook.stdin);
        // A writer task, so a child that does not read its input cannot deadlock us; an
        // error (the child exited without reading) is of no interest.
        tokio::spawn(async move {
            let _ = stdin.write_all(data.as_bytes()).await;
        });
    }

    let deadline = hook.timeout.map(|t| Instant::now() + t);
    let mut out = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    let mut status: Option<ExitStatus> = None;
    let mut grace_until: Option<Instant> = None;
    let mut eof = false;
    while !(eof && status.is_some()) {
        tokio::select! {
            r = rx.read(&mut buf), if !eof => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    truncated |= n > room;
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(wait_err)?);
                grace_until = Some(Instant::now() + OUTPUT_GRACE);
            },
            _ = sleep_until_opt(grace_until), if status.is_some() => break,
            _ = sleep_until_opt(deadline), if status.is_none() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(HookError::TimedOut {
                    name: hook.name,
                    command: hook.command.to_owned(),
                    after: hook.timeout.unwrap_or_default(),
                    output: text(&out),
                });
            },
        }
    }
    let output = text(&out);
    match status {
        Some(s) if s.success() => Ok(HookOutput { output, truncated }),
        Some(s) => Err(HookError::Failed {
            name: hook.name,
            command: hook.command.to_owned(),
            status: s,
            output,
        }),
        // The loop only ends once the child was reaped.
        None => Err(wait_err(std::io::Error::other("child status unknown"))),
    }
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_owned()
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> String {
        match name {
            "SUBNET" => "10.5.3.0/24".into(),
            "PUBLIC_IP" => "192.0.2.1".into(),
            "1" => "one".into(),
            "SPACED" => "a b".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn expansion_follows_go_os_expand() {
        let cases = [
            ("$SUBNET", "10.5.3.0/24"),
            ("${SUBNET}", "10.5.3.0/24"),
            ("via=$PUBLIC_IP:8285", "via=192.0.2.1:8285"),
            ("${PUBLIC_IP}x", "192.0.2.1x"),
            ("$PUBLIC_IPx", ""),
            ("$UNSET-", "-"),
            ("$1$2", "one"),
            ("${1}", "one"),
            ("cost$", "cost$"),
            ("a$ b", "a$ b"),
            ("a$/b", "a$/b"),
            ("x${}y", "xy"),
            ("x${SUBNET", "xSUBNET"),
            ("plain", "plain"),
            ("$$", ""),
        ];
        for (input, want) in cases {
            assert_eq!(go_expand(input, env), want, "expanding {input:?}");
        }
    }

    #[test]
    fn words_are_split_before_expansion() {
        assert_eq!(
            argv("  ip route add $SUBNET\tvia ${PUBLIC_IP} \n", env),
            ["ip", "route", "add", "10.5.3.0/24", "via", "192.0.2.1"]
        );
        assert_eq!(argv("echo $SPACED", env), ["echo", "a b"]);
        assert!(argv(" \t ", env).is_empty());
    }

    fn hook<'a>(command: &'a str, stdin: &'a str) -> Hook<'a> {
        Hook {
            name: "TestCommand",
            command,
            vars: vec![("SUBNET", "10.5.3.0/24".into())],
            stdin,
            timeout: None,
        }
    }

    #[tokio::test]
    async fn output_is_combined_and_trimmed_and_stdin_gets_a_newline() {
        let script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            script.path(),
            "read line; echo \"in:$line\"; echo err:$SUBNET >&2; echo out:$1\n",
        )
        .unwrap();
        let path = script.path().to_str().unwrap().to_owned();
        let cmd = format!("sh {path} $SUBNET");
        let out = run(&hook(&cmd, "some data")).await.unwrap();
        assert_eq!(out.output, "in:some data\nerr:10.5.3.0/24\nout:10.5.3.0/24");
        assert!(!out.truncated);
    }

    #[tokio::test]
    async fn shell_syntax_is_not_interpreted() {
        let out = run(&hook("echo a; echo b && $(id)", "")).await.unwrap();
        assert_eq!(out.output, "a; echo b && $(id)");
    }

    #[tokio::test]
    async fn failures_carry_status_and_output() {
        let err = run(&hook("false ignored args", "")).await.unwrap_err();
        match &err {
            HookError::Failed { status, .. } => assert_eq!(status.code(), Some(1)),
            other => panic!("unexpected {other:?}"),
        }
        let err = run(&hook("/nonexistent/prog x", "")).await.unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        assert!(err.to_string().contains("TestCommand"), "{err}");
        assert!(matches!(
            run(&hook("   ", "")).await,
            Err(HookError::Empty { .. })
        ));
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_at_its_timeout() {
        let mut h = hook("sleep 30", "");
        h.timeout = Some(Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert!(matches!(run(&h).await, Err(HookError::TimedOut { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_background_child_holding_the_pipe_does_not_hang_the_caller() {
        let script = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(script.path(), "sleep 20 &\necho started\n").unwrap();
        let cmd = format!("sh {}", script.path().display());
        let started = std::time::Instant::now();
        let out = run(&hook(&cmd, "")).await.unwrap();
        assert_eq!(out.output, "started");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
