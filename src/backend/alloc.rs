//! The `alloc` backend: holds a lease and nothing else (no forwarding).

use super::{Backend, BackendAttrs, BackendContext};
use crate::subnet::lease::{Lease, LeaseEvent};

/// Reserves a subnet for this host without programming anything.
#[derive(Debug)]
pub struct Alloc {
    mtu: u32,
}

impl Alloc {
    pub fn new(ctx: &BackendContext) -> Self {
        Alloc { mtu: ctx.iface.mtu }
    }
}

impl Backend for Alloc {
    fn mtu(&self) -> u32 {
        self.mtu
    }

    async fn prepare(&mut self) -> anyhow::Result<BackendAttrs> {
        // Upstream's alloc publishes only PublicIP: no BackendType.
        Ok(BackendAttrs::default())
    }

    async fn start(&mut self, own: &Lease) -> anyhow::Result<()> {
        tracing::info!(subnet = %own.key.cidr(), "alloc backend holds the lease; no forwarding is set up");
        Ok(())
    }

    async fn apply(&mut self, events: &[LeaseEvent]) {
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => {
                    tracing::info!(subnet = %l.key.cidr(), public_ip = %l.attrs.public_ip, "lease added")
                }
                LeaseEvent::Removed(l) => {
                    tracing::info!(subnet = %l.key.cidr(), public_ip = %l.attrs.public_ip, "lease removed")
                }
            }
        }
    }
}
