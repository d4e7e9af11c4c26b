//! Shell completions and man pages, generated from the CLI's definitions:
//! bash completes the verbs and their flags, groff renders every page.

use std::process::{Command, Output};

use tend_tests::bin;

fn tend(args: &[&str]) -> Output {
    let out = Command::new(bin("tend")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tend {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What bash's completion of `tend` offers for `words` (the last one is the
/// word being completed).
fn bash_completes(script: &str, words: &[&str]) -> Vec<String> {
    let program = format!(
        "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"{line}\"; \
         COMP_POINT=${{#COMP_LINE}}; _tend tend \"${{COMP_WORDS[COMP_CWORD]}}\" \
         \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        line = words.join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_verbs_and_their_flags() {
    let script = String::from_utf8(tend(&["completions", "bash"]).stdout).unwrap();
    let verbs = bash_completes(&script, &["tend", "st"]);
    for want in ["status", "stats", "stop"] {
        assert!(verbs.iter().any(|v| v == want), "{want} not in {verbs:?}");
    }
    assert!(!verbs.iter().any(|v| v == "run"), "{verbs:?}");
    let flags = bash_completes(&script, &["tend", "stop", "--d"]);
    assert!(flags.iter().any(|f| f == "--detach"), "{flags:?}");
    let shells = bash_completes(&script, &["tend", "completions", "f"]);
    assert_eq!(shells, ["fish"]);
}

#[test]
fn zsh_and_fish_scripts_name_every_verb() {
    let zsh = String::from_utf8(tend(&["completions", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef tend"), "{zsh:.80}");
    let fish = String::from_utf8(tend(&["completions", "fish"]).stdout).unwrap();
    for verb in [
        "run", "agent", "status", "stats", "logs", "stop", "signal", "doctor",
    ] {
        assert!(zsh.contains(&format!("'{verb}:")), "zsh lacks {verb}");
        assert!(
            fish.contains(&format!("-a \"{verb}\"")),
            "fish lacks {verb}"
        );
    }
}

/// `groff -man -Tutf8 -ww` of `page`: the text, with no warning.
fn render(page: &std::path::Path) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww"])
        .arg(page)
        .output()
        .expect("groff (package groff-base) renders the pages");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Bold and underline are overstrikes; keep the letters.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        plain.push(c);
    }
    plain
}

#[test]
fn every_man_page_renders_and_documents_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let listed =
        String::from_utf8(tend(&["man", "--dir", dir.path().to_str().unwrap()]).stdout).unwrap();
    let pages: Vec<&str> = listed.lines().collect();
    assert!(pages.len() >= 12, "{pages:?}");
    for page in &pages {
        assert!(!render(std::path::Path::new(page)).is_empty(), "{page}");
    }
    let main = render(&dir.path().join("tend.1"));
    for verb in ["run", "agent", "status", "stop", "logs"] {
        assert!(main.contains(&format!("tend-{verb}(1)")), "{main}");
    }
    let stop = render(&dir.path().join("tend-stop.1"));
    assert!(stop.contains("tend stop"), "{stop}");
    assert!(stop.contains("--detach"), "{stop}");
    assert!(dir.path().join("tend-job-init.1").exists());
    // Without --dir: tend(1) on stdout, the same page.
    let stdout = tend(&["man"]).stdout;
    assert_eq!(stdout, std::fs::read(dir.path().join("tend.1")).unwrap());
}
