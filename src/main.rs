//! The `promptgate` binary: parse the command line and hand over to [`promptgate::cli`].

/// mimalloc rather than the system allocator: see BENCHMARKS.md §18 for what it saves per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(promptgate::cli::main());
}
