//! `esmfuzz`: parse, run, map the result to an exit code (0 passed, 1 a check failed,
//! 2 usage, input or load error).

mod cli;

use std::process::ExitCode;

/// burn allocates a fresh buffer per op; glibc returns large ones to the kernel and pays a
/// page fault per page on the next. mimalloc keeps them (measured: ~30% of CPU time was
/// page clearing under glibc malloc).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use cli::{Cli, Outcome};
use esmfuzz::batch::oom;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A device allocation that fails panics inside burn-cuda; where no caller turned it into
    // an error (embed lowers its budget), it ends the run as one, naming the batch.
    oom::quiet_out_of_memory_panics();
    let ran = std::panic::catch_unwind(|| cli::run(cli)).unwrap_or_else(|payload| {
        match oom::describe_escaped_panic(payload.as_ref()) {
            Some(what) => Err(anyhow::anyhow!(what)),
            None => std::panic::resume_unwind(payload),
        }
    });
    match ran {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
