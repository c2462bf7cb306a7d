//! The `tether` binary: parses the command line and hands it to [`tether::cli::run`].

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of glibc's malloc. The agent allocates on many threads (the runtime's
/// workers, Git and render work on blocking threads), and glibc's arenas kept much of what
/// they freed: at 10,000 Applications the agent's peak was 1,003-1,110 MiB in two runs
/// with glibc and 924 MiB with jemalloc a few commits later (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Run by git as its askpass helper (image updates): answer and stop.
    if let Some(answer) = tether::images::writeback::askpass_answer() {
        println!("{answer}");
        return ExitCode::SUCCESS;
    }
    let cli = tether::cli::Cli::parse();
    // Jsonnet is evaluated by this program in child processes, under the render limits.
    if let Ok(program) = std::env::current_exe() {
        tether::render::jsonnet::set_program(program);
    }
    tether::cli::init_logging(cli.global.verbose);
    // One thread for one-shot commands: they wait on the API server (an apply of 2,000
    // objects uses 2 s of CPU in 20 s). The agent serves and reconciles at once: all cores.
    let runtime = if matches!(cli.command, tether::cli::Command::Agent(_)) {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(tether::cli::run(cli, &mut stdout)) {
        Ok(code) => ExitCode::from(code),
        // `tether render | head`: the reader left; that is not an error.
        Err(err)
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // The whole chain on one line: "what failed: why", each cause once.
            eprintln!("error: {}", tether::error::chain(err.as_ref()));
            ExitCode::from(1)
        }
    }
}
