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
mod reload;
mod shutdown;

/// mimalloc keeps freed buffers for reuse where the system allocator hands
/// them back to the kernel; a download allocates a GiB of receive buffers
/// per GiB, and the page faults to re-map them were measurable. It is built
/// without transparent huge pages (`no_thp`): with them a supernode's many
/// small allocations held whole 2 MiB pages half used, about 2 KiB more
/// resident memory per leaf (benches/load.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use canopy_cli::config::{self, LoadError};
use canopy_cli::settings::leaf::LeafArgs;
use canopy_cli::settings::supernode::SupernodeArgs;

use clap::{Parser, Subcommand};

/// Canopy: peer-to-peer file sharing with supernodes and leaves.
#[derive(Debug, Parser)]
#[command(name = "canopy", version, about)]
struct Cli {
    #[command(flatten)]
    logging: config::Logging,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a supernode: index leaves' files and route queries.
    Supernode(SupernodeArgs),
    /// Run a leaf: share folders (or none) and stay in the overlay; it
    /// promotes itself to a supernode when the network needs one and it
    /// can (`--no-auto-supernode`: never). `canopy node` is the same.
    #[command(visible_alias = "node")]
    Leaf(LeafArgs),
    /// Search the overlay: through the running leaf, or a supernode.
    Search(commands::search::Args),
    /// Download a file by content id, link or search result number, verified:
    /// queued in the running leaf, or fetched standalone through a supernode.
    Get(commands::get::Args),
    /// Show what the running leaf is doing: supernodes, shares, totals.
    Status(commands::status::Args),
    /// List the running leaf's download queue.
    Downloads(commands::downloads::Args),
    /// List the running leaf's uploads.
    Uploads(commands::uploads::Args),
    /// Pause a download of the running leaf (ID or N from `canopy downloads`).
    Pause(commands::queue_control::Args),
    /// Resume a paused or failed download of the running leaf.
    Resume(commands::queue_control::Args),
    /// Cancel a download of the running leaf (its partial file is removed).
    Cancel(commands::queue_control::Args),
    /// Print the content ids of files and shared folders' files, as b3sum would.
    Hash(commands::hash::Args),
    /// Start a small overlay on 127.0.0.1, search it, and show what was found.
    Demo(commands::demo::Args),
}

/// A command with its settings resolved, ready to run.
enum Job {
    Supernode(Box<commands::supernode::Settings>),
    Leaf(Box<commands::leaf::Settings>),
    Search(commands::search::Args),
    Get(commands::get::Args),
    Status(commands::status::Args),
    Downloads(commands::downloads::Args),
    Uploads(commands::uploads::Args),
    Queue(
        commands::queue_control::Action,
        commands::queue_control::Args,
    ),
    Hash(commands::hash::Args),
    Demo(commands::demo::Args),
}

fn init_logging(default_level: &str, format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never in a log file
        // or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Text => logs.try_init(),
        config::LogFormat::Json => logs.json().try_init(),
    };
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    // Settings first: a bad config file exits with status 2, as a bad flag does.
    let loaded = match config::load_command_line::<Cli>(&argv) {
        Ok(loaded) => loaded,
        Err(LoadError::Usage(error)) => error.exit(),
        Err(LoadError::Config(error)) => {
            eprintln!("canopy: {error}");
            return ExitCode::from(2);
        }
    };
    let origin = config::Origin {
        file: loaded.file.as_ref().map(|file| file.path.as_path()),
        given: &loaded.given,
    };
    let (file, given) = (&loaded.file, &loaded.given);
    let reloader = |_| (argv.clone(), file.clone(), given.clone());
    let log_format = loaded.cli.logging.log_format.unwrap_or_default();
    let job = match loaded.cli.command {
        Command::Supernode(args) => commands::supernode::resolve(
            &args,
            origin,
            reload::Reloader::new(reloader(()), pick_supernode),
        )
        .map(|settings| Job::Supernode(Box::new(settings))),
        Command::Leaf(args) => commands::leaf::resolve(
            &args,
            origin,
            reload::Reloader::new(reloader(()), pick_leaf),
        )
        .map(|settings| Job::Leaf(Box::new(settings))),
        Command::Search(args) => Ok(Job::Search(args)),
        Command::Get(args) => Ok(Job::Get(args)),
        Command::Status(args) => Ok(Job::Status(args)),
        Command::Downloads(args) => Ok(Job::Downloads(args)),
        Command::Uploads(args) => Ok(Job::Uploads(args)),
        Command::Pause(args) => Ok(Job::Queue(commands::queue_control::Action::Pause, args)),
        Command::Resume(args) => Ok(Job::Queue(commands::queue_control::Action::Resume, args)),
        Command::Cancel(args) => Ok(Job::Queue(commands::queue_control::Action::Cancel, args)),
        Command::Hash(args) => Ok(Job::Hash(args)),
        Command::Demo(args) => Ok(Job::Demo(args)),
    };
    let job = match job {
        Ok(job) => job,
        Err(error) => {
            eprintln!("canopy: {error}");
            return ExitCode::from(2);
        }
    };
    let default_level = match &job {
        Job::Supernode(_) | Job::Leaf(_) => "info",
        _ => "warn",
    };
    init_logging(default_level, log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("canopy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match job {
            Job::Supernode(settings) => commands::supernode::run(*settings).await,
            Job::Leaf(settings) => commands::leaf::run(*settings).await,
            Job::Search(args) => commands::search::run(args).await,
            Job::Get(args) => commands::get::run(args).await,
            Job::Status(args) => commands::status::run(args).await,
            Job::Downloads(args) => commands::downloads::run(args).await,
            Job::Uploads(args) => commands::uploads::run(args).await,
            Job::Queue(action, args) => commands::queue_control::run(action, args).await,
            Job::Hash(args) => commands::hash::run(args).await,
            Job::Demo(args) => commands::demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("canopy: {}", error_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn pick_supernode(command: Command) -> Option<SupernodeArgs> {
    match command {
        Command::Supernode(args) => Some(args),
        _ => None,
    }
}

fn pick_leaf(command: Command) -> Option<LeafArgs> {
    match command {
        Command::Leaf(args) => Some(args),
        _ => None,
    }
}

/// The error and its causes on one line, each said once: our libraries'
/// errors write their source into their own message (`cannot listen on
/// ADDR: Address in use`), so a cause already said is not repeated.
fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
