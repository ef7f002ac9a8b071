//! The provider upstream: its resolved addresses and the peer each request
//! connects to.
//!
//! `HttpPeer::new` with a host name resolves DNS on the request path and
//! panics on failure, so names are resolved here, in the background, and
//! peers are built from socket addresses.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;

use crate::config::{Upstream, UpstreamUrl};

/// How often a host name is resolved again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// The upstream's settings and its current addresses.
pub struct UpstreamTarget {
    pub url: UpstreamUrl,
    connect_timeout: Duration,
    read_timeout: Duration,
    pool_idle_timeout: Duration,
    addresses: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl UpstreamTarget {
    /// Creates the target and resolves its host once, blocking; a failure is
    /// logged and retried by [`Resolver`].
    pub fn new(upstream: &Upstream) -> Self {
        let target = UpstreamTarget {
            url: upstream.url.clone(),
            connect_timeout: upstream.connect_timeout,
            read_timeout: upstream.read_timeout,
            pool_idle_timeout: upstream.pool_idle_timeout,
            addresses: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        };

        if let Ok(ip) = target.url.host.parse::<IpAddr>() {
            target
                .addresses
                .store(Arc::new(vec![SocketAddr::new(ip, target.url.port)]));
        } else {
            match target.url.authority().to_socket_addrs() {
                Ok(found) => target.addresses.store(Arc::new(found.collect())),
                Err(e) => warn!(
                    "cannot resolve upstream host {}: {e}; requests fail with 502 until it resolves",
                    target.url.host
                ),
            }
        }
        target
    }

    /// Returns whether the host is a name that needs resolving again over time.
    fn is_host_name(&self) -> bool {
        self.url.host.parse::<IpAddr>().is_err()
    }

    /// Builds a peer for the next request, rotating over the resolved addresses;
    /// `None` while the host has no address.
    pub fn peer(&self) -> Option<HttpPeer> {
        let addresses = self.addresses.load();
        if addresses.is_empty() {
            return None;
        }
        let address = addresses[self.next.fetch_add(1, Ordering::Relaxed) % addresses.len()];

        let mut peer = HttpPeer::new(address, self.url.tls, self.url.host.clone());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(self.pool_idle_timeout);
        Some(peer)
    }
}

/// Background task that keeps the upstream's addresses current.
pub struct Resolver {
    pub target: Arc<UpstreamTarget>,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.target.is_host_name() {
            return;
        }
        let authority = self.target.url.authority();

        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RESOLVE_INTERVAL) => {}
            }

            match tokio::net::lookup_host(&authority).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    if found.is_empty() {
                        warn!("upstream host {authority} resolved to no address; keeping the previous ones");
                        continue;
                    }
                    if self.target.addresses.load().as_slice() != found.as_slice() {
                        info!("upstream host {authority} now resolves to {found:?}");
                    }
                    self.target.addresses.store(Arc::new(found));
                }
                Err(e) => warn!(
                    "cannot resolve upstream host {authority}: {e}; keeping the previous addresses"
                ),
            }
        }
    }
}
