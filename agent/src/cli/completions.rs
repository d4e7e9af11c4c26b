//! `tend completions SHELL` and `tend man`: generated from the clap
//! definitions of [`super::Cli`], so they never drift from the verbs.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::Cli;

/// Write the completion script of `shell` for `tend`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "tend", out);
}

/// The man pages: `tend.1` to `out` without a dir; with one, `tend.1` and a
/// `tend-<verb>.1` per verb (and `tend-job-init.1` for nested ones) written
/// there, their paths listed on `out`.
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd).render(out)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("man: creating {}: {e}", dir.display()))?;
    write_pages(&cmd, &["tend"], dir, out)
}

/// `cmd`'s page as `tend-<verb>...1` (its synopsis `tend <verb>...`), then
/// each subcommand's.
fn write_pages(
    cmd: &clap::Command,
    words: &[&str],
    dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = words.join("-");
    let page = cmd.clone().bin_name(words.join(" "));
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).title(name).render(&mut buf)?;
    std::fs::write(&path, buf)
        .map_err(|e| anyhow::anyhow!("man: writing {}: {e}", path.display()))?;
    writeln!(out, "{}", path.display())?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut sub_words = words.to_vec();
        sub_words.push(sub.get_name());
        write_pages(sub, &sub_words, dir, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_is_in_the_bash_completions() {
        let mut buf = Vec::new();
        completions(clap_complete::Shell::Bash, &mut buf);
        let text = String::from_utf8(buf).unwrap();
        for verb in Cli::command().get_subcommands() {
            assert!(
                text.contains(verb.get_name()),
                "{} missing from the bash completions",
                verb.get_name()
            );
        }
    }

    #[test]
    fn a_page_per_verb_and_nested_verb() {
        let dir = tempfile::tempdir().unwrap();
        let mut listed = Vec::new();
        man(Some(dir.path()), &mut listed).unwrap();
        let listed = String::from_utf8(listed).unwrap();
        for page in ["tend.1", "tend-run.1", "tend-stop.1", "tend-job-init.1"] {
            let path = dir.path().join(page);
            assert!(listed.contains(&*path.to_string_lossy()), "{listed}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(".TH "), "{page}");
        }
    }
}
