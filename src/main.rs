//! The `tollgate` command: run the gateway, check a configuration file, or
//! hash an internal key for the configuration.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tollgate::config::{Config, StateSettings};
use tollgate::keys::KeyDigest;
use tollgate::server::{self, RunFlags};
use tollgate::state::report;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "LLM gateway with per-user keys and token budgets"
)]
struct Cli {
    /// Configuration file, native or Membrane format.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        default_value = "/etc/tollgate/tollgate.yaml"
    )]
    conf: PathBuf,

    /// Check the configuration file and exit: 0 when valid.
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,

    /// Take over the listening sockets of a running tollgate (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the SHA-256 digest of an internal key, for `api_key_sha256`.
    /// Reads the key from standard input when it is not given.
    HashKey {
        /// The key; prefer standard input so it stays out of shell history.
        key: Option<String>,
    },

    /// Print tokens and requests from the usage log of the state database
    /// named by -c FILE. Safe to run while the gateway runs.
    Usage(UsageArgs),
}

#[derive(clap::Args)]
struct UsageArgs {
    /// Start of the period: a duration before now (24h, 7d), a UTC date
    /// (2026-12-01) or an RFC 3339 time.
    #[arg(long, value_name = "TIME", default_value = "24h")]
    since: String,

    /// End of the period, excluded, in the same forms as --since; default now.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,

    /// Columns to group by, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "user,model")]
    by: Vec<report::GroupBy>,

    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: report::ReportFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    if let Some(Command::HashKey { key }) = cli.command {
        return hash_key(key);
    }

    if let Some(Command::Usage(args)) = &cli.command {
        return match print_usage(&cli.conf, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("tollgate: {message}");
                ExitCode::FAILURE
            }
        };
    }

    let (config, format) = match Config::load(&cli.conf) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("tollgate: {message}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!(
            "tollgate: the configuration file {} ({:?} format, {} users) is valid",
            cli.conf.display(),
            format,
            config.users.len()
        );
        return ExitCode::SUCCESS;
    }

    tollgate::logging::init(&config.log);
    let flags = RunFlags {
        daemon: cli.daemon,
        upgrade: cli.upgrade,
    };
    match server::run(config, flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(key) => key,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the key and press Enter:");
            }
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("tollgate: failed to read the key from standard input: {e}");
                return ExitCode::FAILURE;
            }
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    if key.is_empty() {
        eprintln!("tollgate: the key is empty");
        return ExitCode::FAILURE;
    }
    println!("{}", KeyDigest::of(&key).to_hex());
    ExitCode::SUCCESS
}

fn print_usage(conf: &std::path::Path, args: &UsageArgs) -> Result<(), String> {
    let state = StateSettings::load(conf)?;
    let now = std::time::SystemTime::now();
    let query = report::ReportQuery {
        since_ms: report::parse_time(&args.since, "--since", now)?,
        until_ms: match &args.until {
            Some(until) => report::parse_time(until, "--until", now)?,
            None => report::parse_time("0s", "--until", now)?,
        },
        group_by: args.by.clone(),
    };
    let rows = report::run(&state, &query)?;
    print!("{}", report::render(&rows, &query.group_by, args.format));
    Ok(())
}
