//! The udp backend's route table: which peer (public IP:port) carries packets for which
//! subnet, built from other hosts' leases and published to the workers lock-free.
//!
//! The control plane keeps a mutable [`RouteSet`] (lease events in, own lease excluded) and, per
//! batch of events, builds an immutable [`RouteTable`] and publishes it through [`Routes`] with
//! one `ArcSwap::store`. Workers `load()` the newest table once per batch: they never block,
//! never take a lock and never see a half-applied batch.
//!
//! All leases of a network share one prefix length, so lookup is `dst & mask`: a direct-indexed
//! array keyed by `(dst - network) >> (32 - SubnetLen)` when the network has at most 2^16
//! subnets (a /16 of /24s uses 256 slots, a /8 of /24s 65,536), else a hash map keyed by the
//! subnet address. Leases that do not fit the grid (another prefix length, outside the network:
//! only a misconfigured cluster writes those) go to a short list searched longest prefix first,
//! so they still route, as upstream's linear "first match" table would route them.
//!
//! Pure: no I/O, no `sys`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use crate::subnet::lease::LeaseEvent;

/// Networks with at most 2^`DIRECT_MAX_BITS` subnets get the direct-indexed array.
const DIRECT_MAX_BITS: u8 = 16;

/// One remote subnet and the peer that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub subnet: Ipv4Net,
    pub peer: SocketAddrV4,
}

/// An immutable snapshot of every route; cheap to look up, rebuilt whole on change.
#[derive(Debug, Clone)]
pub struct RouteTable {
    network: u32,
    net_mask: u32,
    subnet_mask: u32,
    /// `32 - SubnetLen`; `None` when the grid is unusable (SubnetLen shorter than the network).
    shift: Option<u32>,
    index: Index,
    routes: Box<[Route]>,
    /// Indexes into `routes` of routes off the grid, longest prefix first.
    off_grid: Box<[u32]>,
    /// Public IPs of all peers, sorted, for the inbound source check.
    peers: Box<[u32]>,
}

#[derive(Debug, Clone)]
enum Index {
    /// Slot `(dst - network) >> shift` holds route index + 1, or 0 for "no route".
    Direct(Box<[u32]>),
    /// Subnet address → route index.
    Hashed(HashMap<u32, u32, BuildHasherDefault<SubnetHasher>>),
}

impl RouteTable {
    /// A table with no routes for `network` split into /`subnet_len`s.
    pub fn empty(network: Ipv4Net, subnet_len: u8) -> Self {
        Self::build(network, subnet_len, std::iter::empty())
    }

    /// Builds a table. A later route for the same subnet replaces an earlier one.
    pub fn build(
        network: Ipv4Net,
        subnet_len: u8,
        routes: impl IntoIterator<Item = Route>,
    ) -> Self {
        let network = network.trunc();
        let net_prefix = network.prefix_len();
        let grid_bits = subnet_len
            .checked_sub(net_prefix)
            .filter(|_| subnet_len <= 32);
        let shift = grid_bits.map(|_| 32 - u32::from(subnet_len));
        let subnet_mask = prefix_mask(subnet_len.min(32));
        let mut index = match grid_bits {
            Some(bits) if bits <= DIRECT_MAX_BITS => {
                Index::Direct(vec![0u32; 1usize << bits].into_boxed_slice())
            }
            _ => Index::Hashed(HashMap::default()),
        };

        let mut table_routes: Vec<Route> = Vec::new();
        let mut by_subnet: HashMap<Ipv4Net, usize> = HashMap::new();
        for route in routes {
            let route = Route {
                subnet: route.subnet.trunc(),
                ..route
            };
            match by_subnet.get(&route.subnet) {
                Some(&i) => table_routes[i] = route,
                None => {
                    by_subnet.insert(route.subnet, table_routes.len());
                    table_routes.push(route);
                }
            }
        }

        let mut off_grid = Vec::new();
        let on_grid = |subnet: &Ipv4Net| {
            shift.is_some() && subnet.prefix_len() == subnet_len && network.contains(subnet)
        };
        for (i, route) in table_routes.iter().enumerate() {
            let i = i as u32;
            if !on_grid(&route.subnet) {
                off_grid.push(i);
                continue;
            }
            let addr = u32::from(route.subnet.network());
            match &mut index {
                Index::Direct(slots) => {
                    let slot =
                        shift.and_then(|s| (addr - u32::from(network.network())).checked_shr(s));
                    if let Some(entry) = slot.and_then(|s| slots.get_mut(s as usize)) {
                        *entry = i + 1;
                    }
                }
                Index::Hashed(map) => {
                    map.insert(addr, i);
                }
            }
        }
        off_grid.sort_by_key(|&i| std::cmp::Reverse(table_routes[i as usize].subnet.prefix_len()));

        let mut peers: Vec<u32> = table_routes
            .iter()
            .map(|r| u32::from(*r.peer.ip()))
            .collect();
        peers.sort_unstable();
        peers.dedup();

        RouteTable {
            network: u32::from(network.network()),
            net_mask: u32::from(network.netmask()),
            subnet_mask,
            shift,
            index,
            routes: table_routes.into_boxed_slice(),
            off_grid: off_grid.into_boxed_slice(),
            peers: peers.into_boxed_slice(),
        }
    }

    /// The peer for `dst`, if any lease covers it. Never allocates or blocks.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        self.lookup_route(dst).map(|r| r.peer)
    }

    /// The route for `dst`, if any lease covers it.
    pub fn lookup_route(&self, dst: Ipv4Addr) -> Option<&Route> {
        let d = u32::from(dst);
        if let Some(shift) = self.shift.filter(|_| d & self.net_mask == self.network) {
            let hit = match &self.index {
                Index::Direct(slots) => (d - self.network)
                    .checked_shr(shift)
                    .and_then(|s| slots.get(s as usize))
                    .and_then(|&e| e.checked_sub(1)),
                Index::Hashed(map) => map.get(&(d & self.subnet_mask)).copied(),
            };
            if let Some(route) = hit.and_then(|i| self.routes.get(i as usize)) {
                return Some(route);
            }
        }
        self.off_grid
            .iter()
            .filter_map(|&i| self.routes.get(i as usize))
            .find(|r| r.subnet.contains(&dst))
    }

    /// Whether `ip` is the public address of some peer.
    #[inline]
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        self.peers.binary_search(&u32::from(ip)).is_ok()
    }

    /// All routes, in insertion order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether lookups use the direct-indexed array (for tests and benches).
    pub fn is_direct(&self) -> bool {
        matches!(self.index, Index::Direct(_))
    }
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// Hashes a subnet address with one multiply (Fibonacci hashing): subnet addresses differ only
/// in their middle bits, which the multiply spreads into the high bits hashbrown uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SubnetHasher(u64);

impl Hasher for SubnetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The published table, shared by the control plane (writer) and every worker (readers).
#[derive(Debug, Clone)]
pub struct Routes(Arc<ArcSwap<RouteTable>>);

impl Routes {
    pub fn new(table: RouteTable) -> Self {
        Routes(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// Replaces the table; workers see it from their next batch on.
    pub fn publish(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }

    /// The newest table. Lock-free; hold the guard for one batch, not longer.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.load()
    }
}

/// The control plane's view of other hosts' leases, from which tables are built.
/// Keyed by subnet; our own lease is never in it.
#[derive(Debug, Clone)]
pub struct RouteSet {
    network: Ipv4Net,
    subnet_len: u8,
    port: u16,
    own: Option<Ipv4Net>,
    peers: BTreeMap<Ipv4Net, Ipv4Addr>,
}

impl RouteSet {
    /// Routes for `network` split into /`subnet_len`s; every peer is reached on `port`
    /// (upstream assumes the same port on every host).
    pub fn new(network: Ipv4Net, subnet_len: u8, port: u16) -> Self {
        RouteSet {
            network: network.trunc(),
            subnet_len,
            port,
            own: None,
            peers: BTreeMap::new(),
        }
    }

    /// Records our own subnet, which never becomes a route (and drops it if it was one).
    pub fn set_own(&mut self, own: Ipv4Net) {
        let own = own.trunc();
        self.own = Some(own);
        self.peers.remove(&own);
    }

    /// Applies lease events; returns whether the routes changed. Like upstream, leases of
    /// every backend type become routes (the udp backend does not filter on `BackendType`).
    pub fn apply(&mut self, events: &[LeaseEvent]) -> bool {
        let mut changed = false;
        for event in events {
            match event {
                LeaseEvent::Added(lease) => {
                    let subnet = lease.subnet().trunc();
                    if Some(subnet) == self.own {
                        continue;
                    }
                    changed |= self.peers.insert(subnet, lease.attrs.public_ip)
                        != Some(lease.attrs.public_ip);
                }
                LeaseEvent::Removed(lease) => {
                    changed |= self.peers.remove(&lease.subnet().trunc()).is_some();
                }
            }
        }
        changed
    }

    /// The peers' subnets and public addresses (what a re-exec hands to the next image).
    pub fn peers(&self) -> impl Iterator<Item = (Ipv4Net, Ipv4Addr)> + '_ {
        self.peers.iter().map(|(&subnet, &ip)| (subnet, ip))
    }

    /// Adds (or moves) one peer, as an `Added` event for its lease would; our own subnet is
    /// never a peer.
    pub fn insert_peer(&mut self, subnet: Ipv4Net, public_ip: Ipv4Addr) {
        let subnet = subnet.trunc();
        if Some(subnet) != self.own {
            self.peers.insert(subnet, public_ip);
        }
    }

    /// An immutable table of the current routes.
    pub fn table(&self) -> RouteTable {
        let routes = self
            .peers
            .iter()
            .filter(|(subnet, _)| Some(**subnet) != self.own)
            .map(|(&subnet, &ip)| Route {
                subnet,
                peer: SocketAddrV4::new(ip, self.port),
            });
        RouteTable::build(self.network, self.subnet_len, routes)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnet::lease::{Lease, LeaseAttrs, SubnetKey};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(subnet: &str, peer: &str) -> Route {
        Route {
            subnet: net(subnet),
            peer: SocketAddrV4::new(ip(peer), 8285),
        }
    }

    fn lease(subnet: &str, public_ip: &str) -> Lease {
        Lease {
            key: SubnetKey {
                ipv4: net(subnet),
                ipv6: None,
            },
            attrs: LeaseAttrs::with_public_ip(ip(public_ip)),
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn check_lookups(table: &RouteTable) {
        assert_eq!(
            table.lookup(ip("10.5.2.7")),
            Some(SocketAddrV4::new(ip("192.0.2.2"), 8285))
        );
        assert_eq!(
            table.lookup(ip("10.5.2.0")),
            Some(SocketAddrV4::new(ip("192.0.2.2"), 8285))
        );
        assert_eq!(
            table.lookup(ip("10.5.2.255")),
            Some(SocketAddrV4::new(ip("192.0.2.2"), 8285))
        );
        assert_eq!(
            table.lookup(ip("10.5.3.1")),
            Some(SocketAddrV4::new(ip("192.0.2.3"), 8285))
        );
        assert_eq!(table.lookup(ip("10.5.4.1")), None);
        assert_eq!(table.lookup(ip("10.6.2.7")), None, "outside the network");
        assert_eq!(table.lookup(ip("0.0.0.0")), None);
        assert_eq!(table.lookup(ip("255.255.255.255")), None);
        assert!(table.is_peer(ip("192.0.2.2")) && table.is_peer(ip("192.0.2.3")));
        assert!(!table.is_peer(ip("192.0.2.4")));
    }

    #[test]
    fn direct_indexed_lookup() {
        let table = RouteTable::build(
            net("10.5.0.0/16"),
            24,
            [
                route("10.5.2.0/24", "192.0.2.2"),
                route("10.5.3.0/24", "192.0.2.3"),
            ],
        );
        assert!(table.is_direct());
        check_lookups(&table);
    }

    #[test]
    fn hashed_lookup_for_big_grids() {
        // A /8 of /28s has 2^20 subnets: too many slots for the array.
        let table = RouteTable::build(
            net("10.0.0.0/8"),
            28,
            [
                route("10.5.2.0/28", "192.0.2.2"),
                route("10.5.3.0/28", "192.0.2.3"),
            ],
        );
        assert!(!table.is_direct());
        assert_eq!(
            table.lookup(ip("10.5.2.15")),
            Some(SocketAddrV4::new(ip("192.0.2.2"), 8285))
        );
        assert_eq!(table.lookup(ip("10.5.2.16")), None);
        assert_eq!(
            table.lookup(ip("10.5.3.1")),
            Some(SocketAddrV4::new(ip("192.0.2.3"), 8285))
        );
        assert_eq!(table.lookup(ip("11.5.2.1")), None);
    }

    #[test]
    fn largest_direct_grid_and_whole_address_space() {
        let table = RouteTable::build(
            net("10.0.0.0/8"),
            24,
            [route("10.255.255.0/24", "192.0.2.9")],
        );
        assert!(table.is_direct());
        assert_eq!(
            table.lookup(ip("10.255.255.1")).map(|p| *p.ip()),
            Some(ip("192.0.2.9"))
        );
        assert_eq!(table.lookup(ip("10.0.0.1")), None);
        let all = RouteTable::build(net("0.0.0.0/0"), 16, [route("10.5.0.0/16", "192.0.2.9")]);
        assert!(all.is_direct());
        assert_eq!(
            all.lookup(ip("10.5.200.1")).map(|p| *p.ip()),
            Some(ip("192.0.2.9"))
        );
        assert_eq!(all.lookup(ip("10.6.0.1")), None);
    }

    #[test]
    fn off_grid_routes_still_route_longest_prefix_first() {
        let table = RouteTable::build(
            net("10.5.0.0/16"),
            24,
            [
                route("10.5.2.0/24", "192.0.2.2"),
                route("10.5.8.0/22", "192.0.2.8"),
                route("10.5.9.0/25", "192.0.2.9"),
                route("172.16.0.0/24", "192.0.2.10"),
            ],
        );
        assert_eq!(
            table.lookup(ip("10.5.9.1")).map(|p| *p.ip()),
            Some(ip("192.0.2.9"))
        );
        assert_eq!(
            table.lookup(ip("10.5.9.200")).map(|p| *p.ip()),
            Some(ip("192.0.2.8"))
        );
        assert_eq!(
            table.lookup(ip("10.5.10.1")).map(|p| *p.ip()),
            Some(ip("192.0.2.8"))
        );
        assert_eq!(
            table.lookup(ip("172.16.0.5")).map(|p| *p.ip()),
            Some(ip("192.0.2.10"))
        );
        assert_eq!(
            table.lookup(ip("10.5.2.5")).map(|p| *p.ip()),
            Some(ip("192.0.2.2"))
        );
    }

    #[test]
    fn nonsense_subnet_len_does_not_panic() {
        for len in [0u8, 8, 15, 33, 255] {
            let table =
                RouteTable::build(net("10.5.0.0/16"), len, [route("10.5.2.0/24", "192.0.2.2")]);
            assert_eq!(
                table.lookup(ip("10.5.2.1")).map(|p| *p.ip()),
                Some(ip("192.0.2.2")),
                "len {len}"
            );
            assert_eq!(table.lookup(ip("10.5.3.1")), None);
        }
    }

    #[test]
    fn duplicate_subnets_keep_the_last() {
        let table = RouteTable::build(
            net("10.5.0.0/16"),
            24,
            [
                route("10.5.2.0/24", "192.0.2.2"),
                route("10.5.2.0/24", "192.0.2.7"),
            ],
        );
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.lookup(ip("10.5.2.1")).map(|p| *p.ip()),
            Some(ip("192.0.2.7"))
        );
        assert!(!table.is_peer(ip("192.0.2.2")));
    }

    #[test]
    fn route_set_follows_events_and_never_routes_our_own_lease() {
        let mut set = RouteSet::new(net("10.5.0.0/16"), 24, 8285);
        set.set_own(net("10.5.1.0/24"));
        assert!(set.apply(&[
            LeaseEvent::Added(lease("10.5.1.0/24", "192.0.2.1")),
            LeaseEvent::Added(lease("10.5.2.0/24", "192.0.2.2")),
            LeaseEvent::Added(lease("10.5.3.0/24", "192.0.2.3")),
        ]));
        let t = set.table();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(ip("10.5.1.5")), None, "own lease is never a route");
        assert!(!t.is_peer(ip("192.0.2.1")));
        assert_eq!(
            t.lookup(ip("10.5.3.5")),
            Some(SocketAddrV4::new(ip("192.0.2.3"), 8285))
        );

        // Replaying the same batch changes nothing; a new public IP does.
        assert!(!set.apply(&[LeaseEvent::Added(lease("10.5.2.0/24", "192.0.2.2"))]));
        assert!(set.apply(&[LeaseEvent::Added(lease("10.5.2.0/24", "192.0.2.22"))]));
        assert_eq!(
            set.table().lookup(ip("10.5.2.5")).map(|p| *p.ip()),
            Some(ip("192.0.2.22"))
        );

        assert!(set.apply(&[LeaseEvent::Removed(lease("10.5.3.0/24", "192.0.2.3"))]));
        assert!(!set.apply(&[LeaseEvent::Removed(lease("10.5.3.0/24", "192.0.2.3"))]));
        let t = set.table();
        assert_eq!(t.lookup(ip("10.5.3.5")), None);
        assert!(!t.is_peer(ip("192.0.2.3")));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn own_lease_learned_late_is_dropped() {
        let mut set = RouteSet::new(net("10.5.0.0/16"), 24, 8285);
        set.apply(&[LeaseEvent::Added(lease("10.5.1.0/24", "192.0.2.1"))]);
        set.set_own(net("10.5.1.0/24"));
        assert!(set.table().is_empty());
    }

    #[test]
    fn published_tables_are_seen_by_readers() {
        let routes = Routes::new(RouteTable::empty(net("10.5.0.0/16"), 24));
        let reader = routes.clone();
        let before = reader.load();
        routes.publish(RouteTable::build(
            net("10.5.0.0/16"),
            24,
            [route("10.5.2.0/24", "192.0.2.2")],
        ));
        assert!(
            before.is_empty(),
            "a loaded snapshot never changes under the reader"
        );
        assert_eq!(reader.load().len(), 1);
    }
}
