//! Running the extension backend's commands (`PreStartupCommand`, `SubnetAddCommand`, …).
//!
//! Commands run through `sh -c`, as this project's design asks and as upstream did up to
//! v0.28.1, with the backend's variables (`SUBNET`, `PUBLIC_IP`, …) in the environment.
//! That runs both styles of upstream config unchanged: v0.28.2+ dropped the shell and expands
//! `$VAR` itself, and a command like `ip route add $SUBNET via $PUBLIC_IP` means the same to
//! `sh`. Values arrive through the environment, never spliced into the command text, so a
//! remote host's data cannot inject shell syntax.
//!
//! The child gets the daemon's environment plus the variables, `stdin` + `"\n"` on its standard
//! input (upstream writes exactly that), and one pipe for both stdout and stderr: upstream uses
//! Go's `CombinedOutput`, and the pre-startup command's *combined* output becomes the lease's
//! `BackendData`, so the two streams must interleave the same way.
//!
//! # Host state owned by this module
//! Only child processes: each is waited for (or killed on timeout / drop) before `run` returns.

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
    /// Variables added to the command's environment.
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
    #[error("{name}: the command {command:?} is empty")]
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

/// Runs `hook` and returns its output, or why it failed. The child is killed if this future
/// is dropped.
pub async fn run(hook: &Hook<'_>) -> Result<HookOutput, HookError> {
    if hook.command.trim().is_empty() {
        return Err(HookError::Empty {
            name: hook.name,
            command: hook.command.to_owned(),
        });
    }
    let program = "sh".to_owned();
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
        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg("-c")
            .arg(hook.command)
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
    async fn commands_run_through_sh_with_the_variables_in_the_environment() {
        let out = run(&hook(
            "echo a; echo \"$SUBNET\" && printf '%s' \"${SUBNET%/*}\"",
            "",
        ))
        .await
        .unwrap();
        assert_eq!(out.output, "a\n10.5.3.0/24\n10.5.3.0");
        let err = run(&hook("  ", "")).await.unwrap_err();
        assert!(matches!(err, HookError::Empty { .. }), "{err}");
    }

    #[tokio::test]
    async fn failures_carry_status_and_output() {
        let err = run(&hook("false ignored args", "")).await.unwrap_err();
        match &err {
            HookError::Failed { status, .. } => assert_eq!(status.code(), Some(1)),
            other => panic!("unexpected {other:?}"),
        }
        let err = run(&hook("/nonexistent/prog x", "")).await.unwrap_err();
        match &err {
            HookError::Failed { status, .. } => {
                assert_eq!(status.code(), Some(127), "sh: not found")
            }
            other => panic!("unexpected {other:?}"),
        }
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
