//! The policy file's syntax: a strict subset of HCL, one attribute per line,
//! parsed by hand (see the crate doc), and the policy written back in it.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::caller::is_root_name;
use crate::trusted::clean_absolute;
use crate::{Policy, PolicyError, MIB};

/// One parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "a number",
            Value::Bool(_) => "a bool",
            Value::List(_) => "a list",
        }
    }
}

const FIELDS: [&str; 11] = [
    "allow_users",
    "allow_groups",
    "task_users",
    "chroot_sources",
    "cgroup_parent",
    "data_roots",
    "run_roots",
    "max_memory_mb",
    "max_pids",
    "default_memory_mb",
    "default_pids",
];

impl Policy {
    /// Parse the text of a policy file; `path` is only named in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let mut p = Policy::defaults(path);
        let mut seen: Vec<&'static str> = Vec::new();
        let mut callers_named = false;
        // Where each limit was set, for a default above its bound.
        let mut lines: Vec<(&'static str, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| PolicyError::Syntax {
                path: path.to_path_buf(),
                line,
                message,
            };
            let Some((name, value)) = parse_line(raw).map_err(err)? else {
                continue;
            };
            let Some(field) = FIELDS.iter().copied().find(|f| *f == name) else {
                return Err(err(format!("unknown attribute {name:?}")));
            };
            if seen.contains(&field) {
                return Err(err(format!("{field}: set twice")));
            }
            seen.push(field);
            let want = |kind: &str| err(format!("{field}: expected {kind}, got {}", value.kind()));
            match field {
                "allow_users" | "allow_groups" | "task_users" => {
                    let Value::List(items) = value else {
                        return Err(want("a list of strings"));
                    };
                    for it in &items {
                        if it.is_empty() || it.contains(|c: char| c.is_whitespace() || c == ':') {
                            return Err(err(format!("{field}: {it:?} is not a name or an id")));
                        }
                        if field == "task_users" && is_root_name(it) {
                            return Err(err(format!(
                                "task_users: user {it:?} is never allowed (tasks never run as root)"
                            )));
                        }
                    }
                    match field {
                        "allow_users" => {
                            p.allow_users = items;
                            callers_named = true;
                        }
                        "allow_groups" => {
                            p.allow_groups = items;
                            callers_named = true;
                        }
                        _ => p.task_users = items,
                    }
                }
                "chroot_sources" | "data_roots" | "run_roots" => {
                    let Value::List(items) = value else {
                        return Err(want("a list of paths"));
                    };
                    let mut paths = Vec::with_capacity(items.len());
                    for it in &items {
                        paths.push(clean_absolute(it).map_err(|m| err(format!("{field}: {m}")))?);
                    }
                    if field != "chroot_sources" && paths.iter().any(|p| p == Path::new("/")) {
                        return Err(err(format!("{field}: \"/\" is too wide a root")));
                    }
                    match field {
                        "chroot_sources" => p.chroot_sources = paths,
                        "data_roots" => p.data_roots = paths,
                        _ => p.run_roots = paths,
                    }
                }
                "cgroup_parent" => {
                    let Value::Str(s) = value else {
                        return Err(want("a string"));
                    };
                    let ok = !s.is_empty()
                        && Path::new(&s)
                            .components()
                            .all(|c| matches!(c, Component::Normal(_)));
                    if !ok {
                        return Err(err(format!(
                            "cgroup_parent: {s:?} must be a relative path without '..'"
                        )));
                    }
                    p.cgroup_parent = s.trim_end_matches('/').to_string();
                }
                "max_memory_mb" | "max_pids" | "default_memory_mb" | "default_pids" => {
                    let Value::Int(n) = value else {
                        return Err(want("a number"));
                    };
                    if n == 0 {
                        return Err(err(format!("{field}: must be more than 0")));
                    }
                    if field.ends_with("memory_mb") && n.checked_mul(MIB).is_none() {
                        return Err(err(format!("{field}: {n} is too large")));
                    }
                    match field {
                        "max_memory_mb" => p.max_memory_mb = n,
                        "max_pids" => p.max_pids = n,
                        "default_memory_mb" => p.default_memory_mb = n,
                        _ => p.default_pids = n,
                    }
                    lines.push((field, line));
                }
                _ => return Err(err(format!("unknown attribute {name:?}"))),
            }
        }
        if callers_named && !seen.contains(&"allow_groups") {
            // Naming callers by user replaces the default group, not adds to it.
            p.allow_groups.clear();
        }
        p.bound_defaults(path, &lines)?;
        Ok(p)
    }

    /// A default above its bound: refused when the file wrote the default,
    /// else lowered to the bound the file wrote (defaults are bounded by the
    /// maxima, never the other way round).
    pub(crate) fn bound_defaults(
        &mut self,
        path: &Path,
        lines: &[(&'static str, usize)],
    ) -> Result<(), PolicyError> {
        let line_of = |f: &str| lines.iter().find(|(n, _)| *n == f).map(|(_, l)| *l);
        for (dflt, max) in [
            ("default_memory_mb", "max_memory_mb"),
            ("default_pids", "max_pids"),
        ] {
            let (d, m) = if dflt == "default_pids" {
                (&mut self.default_pids, self.max_pids)
            } else {
                (&mut self.default_memory_mb, self.max_memory_mb)
            };
            if *d <= m {
                continue;
            }
            match line_of(dflt) {
                Some(line) => {
                    return Err(PolicyError::Syntax {
                        path: path.to_path_buf(),
                        line,
                        message: format!("{dflt}: {d} is over {max} ({m})"),
                    })
                }
                None => *d = m,
            }
        }
        Ok(())
    }
}

/// One line: None for blank and comment lines, else the name and its value.
fn parse_line(raw: &str) -> Result<Option<(&str, Value)>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected `name = value`, got {:?}", shorten(line)));
    }
    let rest = line[name_end..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return Err(format!("{name}: expected `=` after the name"));
    };
    let mut cur = Cursor {
        s: rest.trim_start(),
        name,
    };
    let value = cur.value()?;
    cur.end()?;
    Ok(Some((name, value)))
}

fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}

struct Cursor<'a> {
    s: &'a str,
    name: &'a str,
}

impl Cursor<'_> {
    fn value(&mut self) -> Result<Value, String> {
        let name = self.name;
        match self.s.chars().next() {
            Some('"') => self.string().map(Value::Str),
            Some('[') => {
                self.s = self.s[1..].trim_start();
                let mut items = Vec::new();
                loop {
                    if let Some(r) = self.s.strip_prefix(']') {
                        self.s = r;
                        return Ok(Value::List(items));
                    }
                    if !self.s.starts_with('"') {
                        return Err(format!(
                            "{name}: a list holds strings only, and ends with `]` on the same line"
                        ));
                    }
                    items.push(self.string()?);
                    self.s = self.s.trim_start();
                    if let Some(r) = self.s.strip_prefix(',') {
                        self.s = r.trim_start();
                    } else if !self.s.starts_with(']') {
                        return Err(format!("{name}: expected `,` or `]` in the list"));
                    }
                }
            }
            Some(c) if c.is_ascii_digit() => {
                let end = self
                    .s
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(self.s.len());
                let n = self.s[..end]
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: {:?} is too large", &self.s[..end]))?;
                self.s = &self.s[end..];
                Ok(Value::Int(n))
            }
            _ => {
                for (word, b) in [("true", true), ("false", false)] {
                    if let Some(r) = self.s.strip_prefix(word) {
                        if !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                            self.s = r;
                            return Ok(Value::Bool(b));
                        }
                    }
                }
                Err(format!(
                    "{name}: expected a string, a number, true, false or a list of strings"
                ))
            }
        }
    }

    /// A quoted string; the cursor is on its opening quote.
    fn string(&mut self) -> Result<String, String> {
        let name = self.name;
        let mut out = String::new();
        let mut chars = self.s.char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.s = &self.s[i + 1..];
                    if out.contains("${") || out.contains("%{") {
                        return Err(format!(
                            "{name}: templates (`${{` or `%{{`) are not allowed"
                        ));
                    }
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, '"')) => out.push('"'),
                    Some((_, '\\')) => out.push('\\'),
                    _ => {
                        return Err(format!(
                            "{name}: only the escapes \\\" and \\\\ are allowed"
                        ))
                    }
                },
                c if c.is_control() => {
                    return Err(format!("{name}: control character in a string"));
                }
                c => out.push(c),
            }
        }
        Err(format!("{name}: unterminated string"))
    }

    fn end(&mut self) -> Result<(), String> {
        let rest = self.s.trim_start();
        if rest.is_empty() || rest.starts_with('#') || rest.starts_with("//") {
            Ok(())
        } else {
            Err(format!(
                "{}: unexpected {:?} after the value (one attribute per line)",
                self.name,
                shorten(rest)
            ))
        }
    }
}

impl fmt::Display for Policy {
    /// The policy as a file that parses back to it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn quote(s: &str) -> String {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        }
        fn list<T: AsRef<OsStr>>(items: &[T]) -> String {
            let quoted: Vec<String> = items
                .iter()
                .map(|i| quote(&String::from_utf8_lossy(i.as_ref().as_bytes())))
                .collect();
            format!("[{}]", quoted.join(", "))
        }
        if !self.allow_users.is_empty() {
            writeln!(f, "allow_users = {}", list(&self.allow_users))?;
        }
        writeln!(f, "allow_groups = {}", list(&self.allow_groups))?;
        writeln!(f, "task_users = {}", list(&self.task_users))?;
        writeln!(f, "chroot_sources = {}", list(&self.chroot_sources))?;
        writeln!(f, "cgroup_parent = {}", quote(&self.cgroup_parent))?;
        writeln!(f, "data_roots = {}", list(&self.data_roots))?;
        writeln!(f, "run_roots = {}", list(&self.run_roots))?;
        writeln!(f, "max_memory_mb = {}", self.max_memory_mb)?;
        writeln!(f, "max_pids = {}", self.max_pids)?;
        writeln!(f, "default_memory_mb = {}", self.default_memory_mb)?;
        writeln!(f, "default_pids = {}", self.default_pids)
    }
}
