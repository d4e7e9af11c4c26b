//! `tend-spawn`: parse argv, run the library, exit with its code.
use tend_spawn::{parse_args, setuid, Command, EXIT_FAILED, EXIT_USAGE, HELP};

fn main() {
    setuid::mark_exec();
    // Setuid: before anything reads the environment or argv (docs/setuid.md).
    if setuid::is_setuid() {
        if let Err(e) = setuid::early_sanitize(&setuid::Linux, std::env::args_os().len()) {
            eprintln!("tend-spawn: {e}");
            std::process::exit(EXIT_FAILED);
        }
    }
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
        Ok(Command::Oci(args)) => tend_spawn::exec_oci(&args),
        Err(e) => {
            eprintln!("tend-spawn: {e}");
            EXIT_USAGE
        }
    };
    std::process::exit(code);
}
