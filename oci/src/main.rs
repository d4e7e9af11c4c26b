//! `tend-oci`: parse argv, run a verb, exit with its code.
use std::path::PathBuf;

use tend_oci::{verbs, DEFAULT_ROOT};

const USAGE: &str = "usage: tend-oci [--root DIR] [--spawn PATH] run [-b|--bundle DIR] ID\n\
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
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-b" | "--bundle" => bundle = args.next(),
            _ if a.starts_with("--bundle=") => bundle = Some(a["--bundle=".len()..].to_string()),
            "-f" | "--force" => force = true,
            // The task's main process is signalled either way (docs/oci.md).
            "-a" | "--all" => {}
            _ => rest.push(a),
        }
    }
    let id = rest
        .first()
        .ok_or_else(|| anyhow::anyhow!("{verb}: no container id\n{USAGE}"))?;
    match verb.as_str() {
        "run" => {
            let spawn = match spawn {
                Some(s) => s,
                None => std::env::current_exe()?.with_file_name("tend-spawn"),
            };
            let bundle = PathBuf::from(bundle.unwrap_or_else(|| ".".into()));
            verbs::run(&root, &spawn, &bundle, id)
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
        "create" | "start" => anyhow::bail!(
            "{verb} is not supported yet: use run (oci.conf's RunTimeRun; docs/oci.md)"
        ),
        _ => anyhow::bail!("unknown command {verb}\n{USAGE}"),
    }
}
