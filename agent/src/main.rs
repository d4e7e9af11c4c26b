//! `tend`: the host agent and its command line.

fn main() -> std::process::ExitCode {
    let code = tend::cli::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
