//! The `warmgate` binary: parse arguments, load the config, run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warmgate",
    version,
    about = "Reverse proxy that ramps traffic into a cold data center"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve on the configured listener.
    Run {
        /// Config file.
        #[arg(long, default_value = "config/warmgate.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective settings; exit 0 if valid, 2 if not.
    CheckConfig {
        /// Config file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { path } => match warmgate::config::load_file(&path) {
            Ok(cfg) => {
                println!("{}", warmgate::config::summary(&cfg));
                ExitCode::SUCCESS
            }
            Err(errs) => report(&errs),
        },
        Cmd::Run { config } => {
            let cfg = match warmgate::config::load_file(&config) {
                Ok(c) => c,
                Err(errs) => return report(&errs),
            };
            init_logging(&cfg.log);
            // One worker: a current-thread runtime skips the work-stealing machinery entirely.
            let mut builder = match cfg.server.workers {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(n);
                    b
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("warmgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(async move {
                let listeners = warmgate::app::bind(&cfg).await?;
                warmgate::app::run(
                    cfg,
                    listeners,
                    Some(config),
                    warmgate::app::shutdown_signal(),
                )
                .await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("warmgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report(errs: &[warmgate::config::ConfigError]) -> ExitCode {
    for e in errs {
        eprintln!("error: {e}");
    }
    ExitCode::from(2)
}

fn init_logging(cfg: &warmgate::config::LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.json {
        b.json().init();
    } else {
        b.init();
    }
}
