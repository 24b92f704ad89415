//! The `promptgate` binary: parse the command line and hand over to [`promptgate::cli`].

fn main() {
    std::process::exit(promptgate::cli::main());
}
