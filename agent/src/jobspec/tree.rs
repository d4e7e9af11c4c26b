//! One located tree for both syntaxes: HCL (through hcl-edit, which keeps
//! spans) and JSON (through [`super::json`]). The decoder reads only this tree,
//! so both forms give the same job and the same messages.

use hcl_edit::expr::Expression;
use hcl_edit::structure::{Body as HclBody, Structure};
use hcl_edit::template::Element;
use hcl_edit::Span;

use super::diag::Collector;

/// A body: attributes and blocks in file order.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) items: Vec<Item>,
}

/// An attribute or a block.
#[derive(Debug)]
pub(crate) enum Item {
    Attr(Attr),
    Block(Block),
}

/// `key = value`.
#[derive(Debug)]
pub(crate) struct Attr {
    pub(crate) key: String,
    /// Byte offset of the key.
    pub(crate) at: usize,
    pub(crate) value: Value,
}

/// `ident "label" { body }`.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) ident: String,
    /// Byte offset of the identifier.
    pub(crate) at: usize,
    /// Labels with their byte offsets.
    pub(crate) labels: Vec<(String, usize)>,
    pub(crate) body: Body,
}

/// A located value.
#[derive(Debug)]
pub(crate) struct Value {
    /// Byte offset of the value.
    pub(crate) at: usize,
    pub(crate) kind: Kind,
}

/// The kinds of values a job file holds.
#[derive(Debug)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    /// Keys with their offsets, in file order.
    Object(Vec<(String, usize, Value)>),
    /// An expression job files do not evaluate (function call, operator, ...);
    /// the text says what it is.
    Unsupported(&'static str),
}

impl Kind {
    /// A short name of the kind for "got ..." in messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Kind::Null => "null".into(),
            Kind::Bool(b) => format!("bool {b}"),
            Kind::Int(i) => format!("{i}"),
            Kind::Float(f) => format!("{f}"),
            Kind::Str(s) => format!("{s:?}"),
            Kind::Array(_) => "a list".into(),
            Kind::Object(_) => "an object".into(),
            Kind::Unsupported(what) => (*what).into(),
        }
    }
}

fn start(span: Option<std::ops::Range<usize>>) -> usize {
    span.map_or(0, |r| r.start)
}

/// Converts an hcl-edit body (parsed with spans) into the located tree.
pub(crate) fn from_hcl(body: &HclBody, src: &str, diags: &mut Collector<'_>) -> Body {
    let mut items = Vec::new();
    for s in body.iter() {
        match s {
            Structure::Attribute(a) => items.push(Item::Attr(Attr {
                key: a.key.as_str().to_string(),
                at: start(a.key.span()),
                value: hcl_value(&a.value, src, diags),
            })),
            Structure::Block(b) => items.push(Item::Block(Block {
                ident: b.ident.as_str().to_string(),
                at: start(b.ident.span()),
                labels: b
                    .labels
                    .iter()
                    .map(|l| (l.as_str().to_string(), start(l.span())))
                    .collect(),
                body: from_hcl(&b.body, src, diags),
            })),
        }
    }
    Body { items }
}

fn hcl_value(e: &Expression, src: &str, diags: &mut Collector<'_>) -> Value {
    let at = start(e.span());
    let kind = match e {
        Expression::Null(_) => Kind::Null,
        Expression::Bool(b) => Kind::Bool(*b.value()),
        Expression::Number(n) => {
            let n = n.value();
            match n.as_i64() {
                Some(i) => Kind::Int(i),
                None => Kind::Float(n.as_f64().unwrap_or(f64::NAN)),
            }
        }
        Expression::String(s) => Kind::Str(s.value().to_string()),
        Expression::Array(a) => Kind::Array(a.iter().map(|v| hcl_value(v, src, diags)).collect()),
        Expression::Object(o) => Kind::Object(
            o.iter()
                .map(|(k, v)| {
                    let (key, kat) = match k {
                        hcl_edit::expr::ObjectKey::Ident(i) => {
                            (i.as_str().to_string(), start(i.span()))
                        }
                        hcl_edit::expr::ObjectKey::Expression(ke) => {
                            let kv = hcl_value(ke, src, diags);
                            let name = match kv.kind {
                                Kind::Str(s) => s,
                                other => other.describe(),
                            };
                            (name, kv.at)
                        }
                    };
                    (key, kat, hcl_value(v.expr(), src, diags))
                })
                .collect(),
        ),
        Expression::StringTemplate(t) => template_text(t.iter(), src, diags),
        Expression::HeredocTemplate(h) => template_text(h.template.iter(), src, diags),
        Expression::Parenthesis(p) => return hcl_value(p.inner(), src, diags),
        Expression::Variable(_) => Kind::Unsupported("a variable reference"),
        Expression::Conditional(_) => Kind::Unsupported("a conditional expression"),
        Expression::FuncCall(_) => Kind::Unsupported("a function call"),
        Expression::Traversal(_) => Kind::Unsupported("a traversal expression"),
        Expression::UnaryOp(_) | Expression::BinaryOp(_) => Kind::Unsupported("an operation"),
        Expression::ForExpr(_) => Kind::Unsupported("a for expression"),
    };
    Value { at, kind }
}

/// Turns an HCL string template back into tend's runtime syntax: `${NAME}`
/// stays as written for the task environment to fill in (Nomad does the
/// same), a literal `${` (written `$${` in HCL) becomes `$${` again so the
/// runtime keeps it literal. Directives (`%{if}`) are refused.
fn template_text<'a>(
    elements: impl Iterator<Item = &'a Element>,
    src: &str,
    diags: &mut Collector<'_>,
) -> Kind {
    let mut out = String::new();
    for el in elements {
        match el {
            Element::Literal(l) => out.push_str(&l.value().replace("${", "$${")),
            Element::Interpolation(i) => match &i.expr {
                Expression::Variable(_) | Expression::Traversal(_) => {
                    match i.span().and_then(|r| src.get(r)) {
                        Some(text) => out.push_str(text),
                        None => return Kind::Unsupported("an interpolation"),
                    }
                }
                _ => {
                    diags.error(
                        start(i.span()),
                        "",
                        "only ${NAME} interpolations are supported (write $${ for a literal ${)",
                    );
                    return Kind::Unsupported("an interpolation");
                }
            },
            Element::Directive(_) => {
                return Kind::Unsupported(
                    "a template directive (%{...}; write %%{ for a literal %{)",
                );
            }
        }
    }
    Kind::Str(out)
}

/// Which body a JSON object stands for: JSON has no blocks, so the schema
/// says which keys are blocks and how many labels they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Root,
    Job,
    Group,
    Task,
    Leaf,
    Resources,
    Network,
    Service,
    Check,
}

/// Child blocks of a body kind: (ident, number of labels, body kind).
fn child_blocks(kind: BodyKind) -> &'static [(&'static str, usize, BodyKind)] {
    match kind {
        BodyKind::Root => &[("job", 1, BodyKind::Job)],
        BodyKind::Job => &[("group", 1, BodyKind::Group)],
        BodyKind::Group => &[("task", 1, BodyKind::Task), ("restart", 0, BodyKind::Leaf)],
        BodyKind::Task => &[
            ("config", 0, BodyKind::Leaf),
            ("resources", 0, BodyKind::Resources),
            ("logs", 0, BodyKind::Leaf),
            ("service", 0, BodyKind::Service),
            ("check", 0, BodyKind::Check),
        ],
        BodyKind::Service => &[
            ("check", 0, BodyKind::Check),
            ("check_restart", 0, BodyKind::Leaf),
        ],
        BodyKind::Check => &[("check_restart", 0, BodyKind::Leaf)],
        BodyKind::Resources => &[("network", 0, BodyKind::Network)],
        BodyKind::Network => &[("port", 1, BodyKind::Leaf)],
        BodyKind::Leaf => &[],
    }
}

/// Converts a JSON object (HCL's JSON syntax) into the located tree.
pub(crate) fn from_json(obj: Value, kind: BodyKind, path: &str, diags: &mut Collector<'_>) -> Body {
    let mut body = Body::default();
    let Kind::Object(entries) = obj.kind else {
        diags.error(
            obj.at,
            "",
            format!("expected a JSON object, got {}", obj.kind.describe()),
        );
        return body;
    };
    for (key, kat, value) in entries {
        match child_blocks(kind).iter().find(|(n, _, _)| *n == key) {
            Some(&(_, nlabels, child)) => json_blocks(
                &key,
                kat,
                value,
                nlabels,
                child,
                Vec::new(),
                path,
                &mut body,
                diags,
            ),
            None => body.items.push(Item::Attr(Attr {
                key,
                at: kat,
                value,
            })),
        }
    }
    body
}

#[allow(clippy::too_many_arguments)]
fn json_blocks(
    ident: &str,
    at: usize,
    value: Value,
    nlabels: usize,
    kind: BodyKind,
    labels: Vec<(String, usize)>,
    parent: &str,
    out: &mut Body,
    diags: &mut Collector<'_>,
) {
    let mut path = if parent.is_empty() {
        ident.to_string()
    } else {
        format!("{parent}.{ident}")
    };
    for (l, _) in &labels {
        path.push('.');
        path.push_str(l);
    }
    match value.kind {
        // HCL's JSON syntax: an array stands for several blocks of one kind.
        Kind::Array(elems) => {
            for el in elems {
                json_blocks(
                    ident,
                    at,
                    el,
                    nlabels,
                    kind,
                    labels.clone(),
                    parent,
                    out,
                    diags,
                );
            }
        }
        Kind::Object(entries) if labels.len() < nlabels => {
            for (label, lat, v) in entries {
                let mut l = labels.clone();
                l.push((label, lat));
                json_blocks(ident, at, v, nlabels, kind, l, parent, out, diags);
            }
        }
        Kind::Object(_) => {
            let block_at = labels.last().map_or(at, |l| l.1);
            let body = from_json(value, kind, &path, diags);
            out.items.push(Item::Block(Block {
                ident: ident.to_string(),
                at: block_at,
                labels,
                body,
            }));
        }
        other => diags.error(
            value.at,
            &path,
            format!(
                "\"{ident}\" is a block: expected a JSON object{}, got {}",
                if nlabels > 0 {
                    " keyed by its label"
                } else {
                    ""
                },
                other.describe()
            ),
        ),
    }
}
