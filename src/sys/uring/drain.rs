//! Stopping a [`Ring`]: the graceful stop a driver runs itself ([`Ring::cancel_reads`], then
//! reaping until [`Ring::in_flight`] is 0), and the drain `Drop` runs before any memory lent
//! to the kernel is freed (see the module doc of `sys::uring`, "Drop order").

use std::io;
use std::time::Instant;

use io_uring::opcode;

use super::{Cqe, Op, Ring, CANCEL_TAG, DRAIN_DEADLINE, REAP_CHUNK, STOP_TAG, TIMEOUT_TAG};

impl Ring {
    /// The graceful half of a stop: from now on nothing is lent again ([`Ring::stopping`]),
    /// and every read and receive in flight, multishot or not, is cancelled; TUN writes are
    /// left to finish. A read the kernel completed before its cancellation still comes back
    /// with its packet through [`Ring::reap`], so the caller can carry it out; one it had not
    /// started leaves the packet queued in the fd for whoever reads it next.
    ///
    /// # Errors
    /// The submission queue could not be flushed.
    pub fn cancel_reads(&mut self) -> io::Result<()> {
        self.stopping = true;
        let mut tags: Vec<u64> = self
            .multi
            .iter()
            .flatten()
            .filter(|m| m.armed)
            .map(|m| m.tag)
            .collect();
        tags.extend(
            self.ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, Op::TunRead | Op::UdpRecv))
                .map(|(i, _)| i as u64),
        );
        for tag in tags {
            let cancel = opcode::AsyncCancel::new(tag).build().user_data(CANCEL_TAG);
            // SAFETY: a cancellation references no userspace memory.
            unsafe { self.push(&cancel)? };
        }
        self.ring.submit()?;
        Ok(())
    }

    /// Submits what is queued and waits for a completion, or for at most the drain's
    /// timeout (so a caller looping until [`Ring::in_flight`] is 0 cannot hang).
    ///
    /// # Errors
    /// `io_uring_enter` failed other than by a signal or a full completion queue.
    pub fn wait_bounded(&mut self) -> io::Result<()> {
        let timeout = opcode::Timeout::new(&self.timeout)
            .build()
            .user_data(TIMEOUT_TAG);
        // SAFETY: the kernel copies the timespec when it prepares the request, during the
        // submit below; `self.timeout` outlives that anyway.
        unsafe { self.push(&timeout)? };
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancels every lent slot and reaps until all are back. Returns whether they all are.
    fn drain(&mut self) -> bool {
        self.stopping = true;
        let multishots = self
            .multi
            .iter()
            .flatten()
            .filter(|m| m.armed)
            .map(|m| m.tag);
        let tags: Vec<u64> = multishots.collect();
        for tag in tags {
            let cancel = opcode::AsyncCancel::new(tag).build().user_data(CANCEL_TAG);
            // SAFETY: a cancellation references no userspace memory.
            if unsafe { self.push(&cancel) }.is_err() {
                break;
            }
        }
        for i in 0..self.ops.len() {
            if !matches!(self.ops[i], Op::Idle | Op::Provided) {
                let cancel = opcode::AsyncCancel::new(i as u64)
                    .build()
                    .user_data(CANCEL_TAG);
                // SAFETY: a cancellation references no userspace memory.
                if unsafe { self.push(&cancel) }.is_err() {
                    break;
                }
            }
        }
        if self.stop_pending {
            let cancel = opcode::AsyncCancel::new(STOP_TAG)
                .build()
                .user_data(CANCEL_TAG);
            // SAFETY: as above.
            let _ = unsafe { self.push(&cancel) };
        }
        let deadline = Instant::now() + DRAIN_DEADLINE;
        let mut chunk = [Cqe::default(); REAP_CHUNK];
        while self.in_flight > 0 && Instant::now() < deadline {
            let timeout = opcode::Timeout::new(&self.timeout)
                .build()
                .user_data(TIMEOUT_TAG);
            // SAFETY: the kernel copies the timespec when it prepares the request, during the
            // submit below; `self.timeout` outlives that anyway.
            if unsafe { self.push(&timeout) }.is_err() {
                break;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINTR)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(_) => break,
            }
            loop {
                let n = self.reap(&mut chunk);
                for &cqe in &chunk[..n] {
                    let _ = self.take_back(cqe);
                }
                if n < REAP_CHUNK {
                    break;
                }
            }
        }
        self.in_flight == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.drain() {
            // Closing a ring releases its registered files later, from a kernel worker; the
            // TUN queue must be closed when the datapath stops (the device goes away with its
            // last queue), so let go of them now. Unregistering waits for every user.
            let submitter = self.ring.submitter();
            let _ = submitter.unregister_files();
            if self.fixed_bufs {
                let _ = submitter.unregister_buffers();
            }
            for m in self.multi.iter().flatten() {
                let _ = submitter.unregister_buf_ring(m.group);
            }
        } else {
            tracing::error!(
                in_flight = self.in_flight,
                "io_uring requests still pending after {DRAIN_DEADLINE:?}; leaking their buffers"
            );
            self.pool.leak();
            for m in self.multi.iter_mut().flatten() {
                m.ring.leaked = true;
            }
        }
    }
}
