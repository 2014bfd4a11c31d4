//! Worker threads: one per TUN queue, each owning its queue fd, its UDP socket(s) and (on the
//! io_uring path) its ring, so no two workers share a ring, a queue or a lock. Only the route
//! table ([`Routes`]) and the stop signal are shared.
//!
//! A periodic logger sums the workers' counters at debug level. Stopping signals the shared
//! eventfd and joins every thread; dropping [`Workers`] does the same.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::counters::{CountersHub, CountersSnapshot, WorkerCounters, WorkerFeatures};
use super::io::mmsg::MmsgIo;
use super::io::uring::UringIo;
use super::io::WorkerFds;
use super::pipeline::{IcmpResponder, PacketIo, Pipeline};
use super::route::Routes;
use super::IoKind;
use crate::sys::eventfd::EventFd;
use crate::sys::tun::TunQueue;
use crate::sys::uring::UringConfig;

/// How often the counters are logged (at debug level).
pub const STATS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long `spawn` waits for each worker to report its I/O set up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The fds of one worker, before the stop signal is attached.
#[derive(Debug)]
pub struct QueueFds {
    pub tun: TunQueue,
    pub rx: UdpSocket,
    pub tx: Option<UdpSocket>,
}

/// How every worker runs.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub io: IoKind,
    pub uring: UringConfig,
    /// Packets per read/receive round on the mmsg path (1 ..= `sys::poll::BATCH`).
    pub mmsg_batch: usize,
    /// Send runs of datagrams to one peer with UDP GSO (`UDP_SEGMENT`; mmsg path).
    pub gso: bool,
    /// The TUN was opened with offloads (virtio-net headers, TCP super-packets): cut them
    /// into GSO sends, receive with UDP GRO and write coalesced super-packets back.
    pub offload: bool,
    /// Drop inbound packets whose inner source is outside the sending peer's subnet.
    pub strict_source: bool,
    /// Source address of ICMP "network unreachable" replies (see `backend::udp`).
    pub icmp_source: Ipv4Addr,
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<Option<QueueFds>>>,
    stop: Arc<EventFd>,
    stats: Vec<Arc<WorkerCounters>>,
    logger: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// Spawns one worker per entry of `queues`.
    ///
    /// # Errors
    /// The stop eventfd or a thread could not be created; workers already started are
    /// stopped again.
    /// Their counters are added to `hub` (and stay there after they stop).
    pub fn spawn(
        queues: Vec<QueueFds>,
        cfg: WorkerConfig,
        routes: &Routes,
        hub: &CountersHub,
    ) -> io::Result<Self> {
        let stop = Arc::new(EventFd::new()?);
        let mut workers = Workers {
            threads: Vec::new(),
            stop: stop.clone(),
            stats: Vec::new(),
            logger: None,
        };
        let count = queues.len();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(count);
        for (index, q) in queues.into_iter().enumerate() {
            let stats = hub.add_worker();
            let fds = WorkerFds {
                tun: q.tun,
                rx: q.rx,
                tx: q.tx,
                stop: stop.clone(),
            };
            let pipeline = Pipeline::new(
                routes.clone(),
                cfg.strict_source,
                IcmpResponder::new(cfg.icmp_source),
                stats.clone(),
            )
            .with_peer_traffic(hub.peers().cloned());
            let io_stats = stats.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("flannel-udp-{index}"))
                .spawn(move || run_worker(index, fds, cfg, pipeline, io_stats, ready))?;
            workers.threads.push(thread);
            workers.stats.push(stats);
        }
        drop(ready_tx);
        // Every worker reports whether it could set up its I/O (ring, socket options) before
        // `spawn` returns, so a datapath that cannot run fails `start` instead of logging later.
        for _ in 0..count {
            match ready_rx.recv_timeout(READY_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e), // `workers` drops: the others are stopped
                Err(_) => return Err(io::Error::other("a udp worker did not start in time")),
            }
        }
        workers.logger = Some(spawn_logger(workers.stats.clone())?);
        Ok(workers)
    }

    /// Sum of every worker's counters.
    pub fn stats(&self) -> CountersSnapshot {
        CountersSnapshot::sum(self.stats.iter().map(|s| &**s))
    }

    /// How many worker threads are still running (a worker stops early only on a fatal I/O
    /// error, which it logs).
    pub fn running(&self) -> usize {
        self.threads.iter().filter(|t| !t.is_finished()).count()
    }

    /// Signals every worker to stop and waits for them. Idempotent.
    pub fn stop(&mut self) {
        drop(self.stop_keeping_fds());
    }

    /// Stops every worker as [`Workers::stop`] does, and returns each worker's fds, still
    /// open, in worker order (`None` for a worker that had failed). A stopping worker first
    /// carries out every packet it had read (see `io::uring`), so what the kernel has not
    /// handed over yet waits in the TUN queues and socket buffers for the next reader.
    pub fn stop_keeping_fds(&mut self) -> Vec<Option<QueueFds>> {
        if let Err(e) = self.stop.signal() {
            tracing::error!(error = %e, "cannot signal udp workers to stop");
        }
        let count = self.threads.len();
        let fds = self
            .threads
            .drain(..)
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    tracing::error!("a udp worker panicked");
                    None
                })
            })
            .collect();
        if count > 0 {
            tracing::info!(workers = count, "udp datapath stopped: {}", self.stats());
        }
        if let Some((tx, t)) = self.logger.take() {
            drop(tx);
            let _ = t.join();
        }
        fds
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of a worker thread: build the I/O layer here (io_uring state is per thread) and
/// run the pipeline until stopped; returns the fds (see [`Workers::stop_keeping_fds`]).
fn run_worker(
    index: usize,
    fds: WorkerFds,
    cfg: WorkerConfig,
    mut pipeline: Pipeline,
    stats: Arc<WorkerCounters>,
    ready: mpsc::SyncSender<io::Result<()>>,
) -> Option<QueueFds> {
    // Report set-up to `Workers::spawn` (which waits for every worker), then run.
    fn run_on<I: PacketIo>(
        io: io::Result<I>,
        what: &str,
        index: usize,
        pipeline: &mut Pipeline,
        ready: &mpsc::SyncSender<io::Result<()>>,
        into_fds: fn(I) -> WorkerFds,
    ) -> Option<(io::Result<()>, QueueFds)> {
        match io {
            Ok(mut io) => {
                let _ = ready.send(Ok(()));
                let result = pipeline.run(&mut io);
                let WorkerFds { tun, rx, tx, .. } = into_fds(io);
                Some((result, QueueFds { tun, rx, tx }))
            }
            Err(e) => {
                let msg = format!("worker {index}: setting up {what}: {e}");
                let _ = ready.send(Err(io::Error::new(e.kind(), msg)));
                None
            }
        }
    }
    let features = |multishot: bool, gso: bool| WorkerFeatures {
        uring: cfg.io == IoKind::Uring,
        offload: cfg.offload,
        gso,
        multishot,
    };
    let ran = match cfg.io {
        IoKind::Uring => {
            let io = UringIo::new(fds, cfg.uring, cfg.offload, stats.clone()).map(|io| {
                let io = io.with_gso(cfg.gso);
                stats.set_features(features(io.multishot(), io.gso_enabled()));
                io
            });
            run_on(
                io,
                "io_uring",
                index,
                &mut pipeline,
                &ready,
                UringIo::into_fds,
            )
        }
        IoKind::Mmsg => {
            stats.set_features(features(false, cfg.gso));
            let io = MmsgIo::new(
                fds,
                cfg.uring.buf_size,
                cfg.mmsg_batch,
                cfg.gso,
                cfg.offload,
                stats,
            );
            run_on(
                io,
                "sockets",
                index,
                &mut pipeline,
                &ready,
                MmsgIo::into_fds,
            )
        }
    };
    let (result, fds) = ran?;
    match result {
        Ok(()) => {
            tracing::debug!(worker = index, "udp worker stopped");
            Some(fds)
        }
        Err(e) => {
            tracing::error!(worker = index, io = ?cfg.io, error = %e, "udp worker failed and stopped");
            None
        }
    }
}

fn spawn_logger(stats: Vec<Arc<WorkerCounters>>) -> io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("flannel-udp-stats".into())
        .spawn(move || {
            let mut last = CountersSnapshot::default();
            loop {
                match rx.recv_timeout(STATS_LOG_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {
                        let now = CountersSnapshot::sum(stats.iter().map(|s| &**s));
                        if now != last {
                            tracing::debug!(workers = stats.len(), "udp datapath: {now}");
                            last = now;
                        }
                    }
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok((tx, thread))
}
