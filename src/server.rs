//! Building and running the Pingora server from a validated configuration.

use std::sync::Arc;

use async_trait::async_trait;
use log::info;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};

use crate::admin;
use crate::budget::{BudgetStore, MemoryStore};
use crate::config::{Config, StoreKind};
use crate::metrics;
use crate::proxy::Gateway;
use crate::state::{SqliteStore, StateWriter};
use crate::upstream::{Resolver, UpstreamTarget};

/// Process flags that Pingora acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    /// Run in the background (`-d`).
    pub daemon: bool,
    /// Take the listening sockets over from a running instance (`-u`).
    pub upgrade: bool,
}

/// Starts the gateway and serves until the process is told to stop, then
/// writes the remaining accounting. Returns an error, before serving, when
/// the state store cannot be opened.
pub fn run(config: Config, flags: RunFlags) -> Result<(), String> {
    // Pingora retries a busy address for about 30 s and then panics in its
    // service threads while the process stays up, so a taken port is found
    // here instead. An upgrade inherits its sockets and skips this.
    if !flags.upgrade {
        check_addresses_free(&config)?;
    }
    let (store, state_writer) = open_store(&config)?;

    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();

    let config = Arc::new(config);
    let upstream = Arc::new(UpstreamTarget::new(&config.upstream));
    let gateway = Gateway::new(config.clone(), store.clone(), upstream.clone());

    let mut proxy =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, gateway, "tollgate API");
    for address in &config.listen {
        proxy.add_tcp(address);
    }
    server.add_service(proxy);
    metrics::register_all();
    server.add_service(admin::service(config.clone(), store, upstream.clone()));
    server.add_service(background_service(
        "upstream resolver",
        Resolver { target: upstream },
    ));
    if config
        .users
        .iter()
        .any(|user| user.policies.max_input_tokens.is_some())
    {
        server.add_service(background_service("tokenizer warm-up", TokenizerWarmup));
    }
    if let Some(writer) = &state_writer {
        server.add_service(background_service("state writer", writer.clone()));
    }

    info!(
        "tollgate starting on {} (admin on {}) for {} users, forwarding to {}",
        config.listen.join(", "),
        config.admin.listen,
        config.users.len(),
        config.upstream.url.authority()
    );
    server.run(RunArgs::default());

    // The runtimes have exited, so no request can charge anything more.
    if let Some(writer) = state_writer {
        writer.shutdown();
    }
    info!("tollgate stopped");
    Ok(())
}

/// Opens the store the `state:` settings name.
fn open_store(config: &Config) -> Result<(Arc<dyn BudgetStore>, Option<StateWriter>), String> {
    match &config.state.store {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::new(config.users.len())), None)),
        StoreKind::Sqlite { path } => {
            let (store, writer) = SqliteStore::open(
                path.clone(),
                config.state.flush_interval,
                &config.users,
                std::time::SystemTime::now(),
            )?;
            Ok((Arc::new(store), Some(writer)))
        }
    }
}

/// Loads the tokenizer at start-up rather than in the first request that
/// needs an exact count; it runs after Pingora has daemonized.
struct TokenizerWarmup;

#[async_trait]
impl BackgroundService for TokenizerWarmup {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let _ = tokio::task::spawn_blocking(tiktoken_rs::o200k_base_singleton).await;
    }
}

fn server_conf(config: &Config) -> ServerConf {
    let settings = &config.server;
    ServerConf {
        threads: settings.threads,
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        error_log: settings.error_log.clone(),
        ca_file: config.upstream.ca_file.clone(),
        grace_period_seconds: Some(settings.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    }
}

/// Fails when an API or admin address cannot be bound, naming it.
fn check_addresses_free(config: &Config) -> Result<(), String> {
    let addresses = config
        .listen
        .iter()
        .map(|address| ("listen", address))
        .chain(std::iter::once(("admin_listen", &config.admin.listen)));
    for (key, address) in addresses {
        if let Err(e) = std::net::TcpListener::bind(address.as_str()) {
            return Err(format!(
                "{key}: cannot listen on {address}: {e}; stop the process that uses it \
                 (`ss -ltnp` shows it) or choose another address"
            ));
        }
    }
    Ok(())
}
