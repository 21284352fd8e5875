//! `canopy`: the command line. Parses arguments, sets up logging, and hands
//! each subcommand to its module in [`commands`]. This is the only place
//! that prints to the terminal; everything else logs through `tracing`.

// The CLI's own error line is printed here; results go through `say!`.
#![allow(clippy::print_stderr)]

/// Writes a line to stdout, returning the error instead of panicking when
/// stdout is gone (`canopy search ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?;
    }};
}

mod commands;
mod output;
mod shutdown;

/// mimalloc keeps freed buffers for reuse where the system allocator hands
/// them back to the kernel; a download allocates a GiB of receive buffers
/// per GiB, and the page faults to re-map them were measurable.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Canopy: peer-to-peer file sharing with supernodes and leaves.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a supernode: index leaves' files and route queries.
    Supernode(commands::supernode::Args),
    /// Run a leaf: share folders and stay in the overlay.
    Leaf(commands::leaf::Args),
    /// Search the overlay through a supernode.
    Search(commands::search::Args),
    /// Download a file by content id from every source at once, verified.
    Get(commands::get::Args),
    /// Print the content ids of shared folders' files, as b3sum would.
    Hash(commands::hash::Args),
    /// Start a small overlay on 127.0.0.1, search it, and show what was found.
    Demo(commands::demo::Args),
}

fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Supernode(_) | Command::Leaf(_) => "info",
        Command::Search(_) | Command::Get(_) | Command::Hash(_) | Command::Demo(_) => "warn",
    };
    init_logging(default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("canopy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Supernode(args) => commands::supernode::run(args).await,
            Command::Leaf(args) => commands::leaf::run(args).await,
            Command::Search(args) => commands::search::run(args).await,
            Command::Get(args) => commands::get::run(args).await,
            Command::Hash(args) => commands::hash::run(args).await,
            Command::Demo(args) => commands::demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("canopy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
