//! Setting a ring up: whether io_uring is usable at all ([`probe`]), which optional features
//! the kernel has, the sizes a worker asks for ([`UringConfig`]) and the ring's task-work mode.

use std::io;
use std::time::Duration;

use io_uring::{opcode, IoUring, Probe};

use crate::sys::errno_error;

/// Opcodes the worker uses; all exist since Linux 5.6.
const REQUIRED_OPS: [(&str, u8); 8] = [
    ("READ", opcode::Read::CODE),
    ("WRITE", opcode::Write::CODE),
    ("READ_FIXED", opcode::ReadFixed::CODE),
    ("WRITE_FIXED", opcode::WriteFixed::CODE),
    ("RECVMSG", opcode::RecvMsg::CODE),
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("TIMEOUT", opcode::Timeout::CODE),
];

/// Checks that io_uring is usable here: not disabled by sysctl, not refused by seccomp, new
/// enough for every opcode we use, and able to complete a request.
///
/// # Errors
/// A human-readable reason to fall back to the mmsg path.
pub fn probe() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2".into());
        }
    }
    let mut ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => {
            format!("io_uring_setup: {e} (kernel.io_uring_disabled or a seccomp filter)")
        }
        Some(libc::ENOSYS) => format!("io_uring_setup: {e} (kernel without io_uring)"),
        _ => format!("io_uring_setup: {e}"),
    })?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e} (kernel older than 5.6)"))?;
    let missing: Vec<&str> = REQUIRED_OPS
        .iter()
        .filter(|(_, code)| !probe.is_supported(*code))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!("io_uring lacks opcodes {}", missing.join(", ")));
    }
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|e| format!("io_uring push: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let done = ring
        .completion()
        .next()
        .map(|cqe| (cqe.user_data(), cqe.result()));
    match done {
        Some((7, res)) if res >= 0 => Ok(()),
        Some((_, res)) => Err(format!("io_uring NOP failed: {}", errno_error(res))),
        None => Err("io_uring NOP did not complete".into()),
    }
}

/// Sizes and modes of one worker's ring and pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Buffers circulating on the egress side (TUN reads in flight without multishot).
    pub egress_slots: usize,
    /// Buffers circulating on the ingress side (UDP receives in flight without multishot).
    pub ingress_slots: usize,
    /// Bytes per buffer; 64 KiB holds any UDP datagram, so nothing is ever truncated.
    pub buf_size: usize,
    /// Use multishot TUN reads and UDP receives over provided-buffer rings where the kernel
    /// has them (see the module docs); otherwise one request per buffer.
    pub multishot: bool,
    /// Before sleeping for completions, poll the ring for this long (zero: never). Spends CPU
    /// to save the wake-up of a sleeping worker (tens of µs) on each hop of a round trip.
    pub busy_poll: Duration,
}

impl UringConfig {
    /// Buffers per direction, measured with `cargo bench --bench throughput` (2 vCPU, kernel
    /// 6.18, multishot): see docs/performance.md, "What was tried". With one-request-per-buffer (no
    /// multishot) every pending read is woken on each arrival, so deeper rings cost CPU there.
    pub const DEFAULT_DEPTH: usize = 16;

    /// `depth` buffers per direction, the other settings default.
    pub fn with_depth(depth: usize) -> Self {
        UringConfig {
            egress_slots: depth,
            ingress_slots: depth,
            ..UringConfig::default()
        }
    }
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            egress_slots: Self::DEFAULT_DEPTH,
            ingress_slots: Self::DEFAULT_DEPTH,
            buf_size: 65536,
            multishot: true,
            busy_poll: Duration::ZERO,
        }
    }
}

/// Whether workers here get multishot reads and receives (for tests and diagnostics).
pub fn multishot_available() -> bool {
    IoUring::new(8).is_ok_and(|ring| multishot_supported(&ring))
}

/// Whether the kernel has multishot TUN reads (`IORING_OP_READ_MULTISHOT`, 6.7). The probe
/// lists opcodes, not flags, so this one check also stands for the older multishot `recvmsg`
/// (6.0) and provided-buffer rings (5.19).
pub(super) fn multishot_supported(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::ReadMulti::CODE)
}

/// Builds the ring with the cheapest task-work mode the kernel has: deferred task work (6.1)
/// runs completions only when we enter the ring to wait, which is exactly when we reap them.
/// The task-run flag tells a busy-polling worker when such an enter has work to run.
pub(super) fn build_ring(entries: u32) -> io::Result<IoUring> {
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        return Ok(ring);
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        return Ok(ring);
    }
    IoUring::new(entries)
}
