//! `tend-oci`: parse argv, run a verb, exit with its code.
use std::path::PathBuf;

use tend_oci::{verbs, DEFAULT_ROOT};

const USAGE: &str =
    "usage: tend-oci [--root DIR] [--spawn PATH] run [-b|--bundle DIR] [--pid-file F] ID\n\
       tend-oci [--root DIR] [--spawn PATH] create [-b|--bundle DIR] [--pid-file F] ID\n\
       tend-oci [--root DIR] start ID\n\
       tend-oci [--root DIR] state ID\n\
       tend-oci [--root DIR] kill [-a|--all] ID [SIGNAL]\n\
       tend-oci [--root DIR] delete [-f|--force] ID\n";

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tend-oci: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> anyhow::Result<i32> {
    let mut args = std::env::args().skip(1).peekable();
    let mut root = PathBuf::from(DEFAULT_ROOT);
    let mut spawn = None;
    while let Some(a) = args.next_if(|a| a.starts_with("--")) {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.clone(), args.next().unwrap_or_default()),
        };
        match k.as_str() {
            "--root" => root = PathBuf::from(v),
            "--spawn" => spawn = Some(PathBuf::from(v)),
            _ => anyhow::bail!("unknown option {a}\n{USAGE}"),
        }
    }
    let verb = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("no command\n{USAGE}"))?;
    let mut bundle = None;
    let mut force = false;
    let mut pid_file = None;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-b" | "--bundle" => bundle = args.next(),
            _ if a.starts_with("--bundle=") => bundle = Some(a["--bundle=".len()..].to_string()),
            "--pid-file" => pid_file = args.next().map(PathBuf::from),
            _ if a.starts_with("--pid-file=") => {
                pid_file = Some(PathBuf::from(&a["--pid-file=".len()..]));
            }
            // The task never has a terminal (process.terminal is refused).
            _ if a == "--console-socket" || a.starts_with("--console-socket=") => anyhow::bail!(
                "{verb}: --console-socket is not supported: tend-oci runs no process with a terminal (docs/oci.md)"
            ),
            "-f" | "--force" => force = true,
            // The task's main process is signalled either way (docs/oci.md).
            "-a" | "--all" => {}
            _ => rest.push(a),
        }
    }
    let id = rest
        .first()
        .ok_or_else(|| anyhow::anyhow!("{verb}: no container id\n{USAGE}"))?;
    let spawn = match spawn {
        Some(s) => s,
        None => std::env::current_exe()?.with_file_name("tend-spawn"),
    };
    let bundle = PathBuf::from(bundle.unwrap_or_else(|| ".".into()));
    match verb.as_str() {
        "run" => verbs::run(&root, &spawn, &bundle, id, pid_file.as_deref()),
        "create" => {
            verbs::create(&root, &spawn, &bundle, id, pid_file.as_deref())?;
            Ok(0)
        }
        "start" => {
            verbs::start(&root, id)?;
            Ok(0)
        }
        "state" => {
            println!("{}", verbs::state(&root, id)?);
            Ok(0)
        }
        "kill" => {
            let signal = verbs::parse_signal(rest.get(1).map_or("TERM", String::as_str))?;
            verbs::kill(&root, id, signal)?;
            Ok(0)
        }
        "delete" => {
            verbs::delete(&root, id, force)?;
            Ok(0)
        }
        _ => anyhow::bail!("unknown command {verb}\n{USAGE}"),
    }
}
