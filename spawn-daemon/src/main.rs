//! `tend-spawn`: parse argv, run the library, exit with its code.
use tend_spawn::{parse_args, Command, EXIT_USAGE, HELP};

fn main() {
    let code = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Version) => {
            println!("tend-spawn {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Help) => {
            print!("{HELP}");
            0
        }
        Ok(Command::Run) => tend_spawn::run(),
        Err(e) => {
            eprintln!("tend-spawn: {e}");
            EXIT_USAGE
        }
    };
    std::process::exit(code);
}
