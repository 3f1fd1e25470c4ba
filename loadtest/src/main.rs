//! `warmgate-loadtest`: rehearse a cutover. `coldsim` is a cold data center, `storm` a login
//! storm, `drill` runs both (with and without warmgate) and writes a report with plots. `floor`
//! is the least a proxy can do per request, for the efficiency bench.
#![forbid(unsafe_code)]

mod clusters;
mod coldsim;
mod drill;
mod fleet;
mod floor;
mod report;
mod rng;
mod storm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warmgate-loadtest",
    version,
    about = "Cutover drills for warmgate"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a simulated cold data center (empty cache, database with a knee).
    Coldsim(coldsim::SimConfig),
    /// Send a login storm at a loopback target and report what happened.
    Storm(storm::StormConfig),
    /// Run coldsim, warmgate and a storm together, and write an HTML report.
    Drill(Box<drill::DrillConfig>),
    /// Relay HTTP/1.1 requests doing nothing else (no parsing, no header rewritten), one
    /// thread: the least a proxy's request costs, for `benches/load.sh`.
    Floor(floor::FloorConfig),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The floor runs on one thread, as a proxy with one worker.
    let rt = match cli.cmd {
        Cmd::Floor(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warmgate-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Coldsim(c) => coldsim::run(c).await,
            Cmd::Storm(c) => {
                let r = storm::run(c).await?;
                println!("{}", serde_json::to_string_pretty(&r.summary)?);
                Ok(())
            }
            Cmd::Drill(c) => {
                let path = drill::run(*c).await?;
                println!("report: {}", path.display());
                Ok(())
            }
            Cmd::Floor(c) => floor::run(c).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warmgate-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}
