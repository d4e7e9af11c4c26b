//! Views of a body: its known attributes and blocks, unknown and duplicate
//! ones recorded, and the names and labels of blocks.

use std::collections::HashSet;

use crate::jobspec::diag::Collector;
use crate::jobspec::tree::{Attr, Block, Body, Item};

/// The checked content of one body: known attributes and blocks only.
pub(super) struct View<'a> {
    pub(super) attrs: Vec<&'a Attr>,
    pub(super) blocks: Vec<&'a Block>,
}

impl<'a> View<'a> {
    pub(super) fn attr(&self, key: &str) -> Option<&'a Attr> {
        self.attrs.iter().copied().find(|a| a.key == key)
    }

    pub(super) fn blocks(&self, ident: &str) -> Vec<&'a Block> {
        self.blocks
            .iter()
            .copied()
            .filter(|b| b.ident == ident)
            .collect()
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.attr(name).is_some() || !self.blocks(name).is_empty()
    }

    pub(super) fn first_at(&self, name: &str) -> usize {
        self.attr(name)
            .map(|a| a.at)
            .or_else(|| self.blocks(name).first().map(|b| b.at))
            .unwrap_or(0)
    }

    /// A block that may appear once; later ones are errors.
    pub(super) fn single_block(
        &self,
        c: &mut Collector<'_>,
        ident: &str,
        path: &str,
    ) -> Option<&'a Block> {
        let bs = self.blocks(ident);
        for extra in bs.iter().skip(1) {
            c.error(
                extra.at,
                &sub(path, ident),
                format!("only one {ident} block is allowed here"),
            );
        }
        bs.first().copied()
    }
}

pub(super) fn expected(names: &[&str]) -> String {
    if names.is_empty() {
        "none are allowed here".to_string()
    } else {
        format!("expected one of: {}", names.join(", "))
    }
}

/// Sorts a body into known attributes and blocks, recording unknown and
/// duplicate ones. A name in both lists (`env`, `meta` ...) may be written
/// either way.
pub(super) fn view<'a>(
    c: &mut Collector<'_>,
    body: &'a Body,
    path: &str,
    attrs: &[&str],
    blocks: &[&str],
) -> View<'a> {
    let mut v = View {
        attrs: Vec::new(),
        blocks: Vec::new(),
    };
    let mut seen = HashSet::new();
    for item in &body.items {
        match item {
            Item::Attr(a) => {
                let p = sub(path, &a.key);
                if attrs.contains(&a.key.as_str()) {
                    if !seen.insert(a.key.clone()) {
                        c.error(a.at, &p, format!("duplicate attribute \"{}\"", a.key));
                    } else {
                        v.attrs.push(a);
                    }
                } else if blocks.contains(&a.key.as_str()) {
                    c.error(
                        a.at,
                        &p,
                        format!("\"{}\" is a block: write {} {{ ... }}", a.key, a.key),
                    );
                } else {
                    c.error(
                        a.at,
                        &p,
                        format!("unknown attribute \"{}\" ({})", a.key, expected(attrs)),
                    );
                }
            }
            Item::Block(b) => {
                let p = sub(path, &b.ident);
                if blocks.contains(&b.ident.as_str()) {
                    if attrs.contains(&b.ident.as_str()) && !seen.insert(b.ident.clone()) {
                        c.error(b.at, &p, format!("duplicate \"{}\"", b.ident));
                    } else {
                        v.blocks.push(b);
                    }
                } else if attrs.contains(&b.ident.as_str()) {
                    c.error(
                        b.at,
                        &p,
                        format!("\"{}\" is an attribute: write {} = ...", b.ident, b.ident),
                    );
                } else {
                    c.error(
                        b.at,
                        &p,
                        format!("unknown block \"{}\" ({})", b.ident, expected(blocks)),
                    );
                }
            }
        }
    }
    v
}

pub(super) fn sub(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(super) fn no_labels(c: &mut Collector<'_>, b: &Block, path: &str) {
    if let Some((_, at)) = b.labels.first() {
        c.error(
            *at,
            path,
            format!("{} takes no label: write {} {{ ... }}", b.ident, b.ident),
        );
    }
}

/// The one label of a job, group or task block, checked to be a plain file name.
pub(super) fn name_label(c: &mut Collector<'_>, b: &Block, kind: &str, parent: &str) -> String {
    let Some((name, at)) = b.labels.first() else {
        c.error(
            b.at,
            &sub(parent, kind),
            format!("{kind} needs a name: {kind} \"NAME\" {{ ... }}"),
        );
        return String::new();
    };
    let path = if kind == "job" {
        format!("job.{name}")
    } else {
        format!("{parent}.{kind}.{name}")
    };
    if b.labels.len() > 1 {
        c.error(
            b.labels[1].1,
            &path,
            format!("{kind} takes one label, got {}", b.labels.len()),
        );
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 200
    {
        c.error(
            *at,
            &path,
            format!("{kind} name must be a plain file name (not empty, \".\" or \"..\", no \"/\" or NUL, at most 200 bytes), got {name:?}"),
        );
    } else if kind == "task" {
        // The task's dir is <alloc_dir>/<name>, beside tend's own entries.
        if let Some(why) = tend_proto::names::reserved_in_alloc_dir(name) {
            c.error(
                *at,
                &path,
                format!(
                    "task name {name:?} {why}: tend keeps it in the alloc dir, choose another name"
                ),
            );
        }
    }
    name.clone()
}
