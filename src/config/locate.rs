//! Maps between byte spans of a TOML document and dotted key paths such as
//! `upstream.endpoints[1]`, so that every config error can name both the key and the line.

use toml_edit::{ImDocument, Item, Table, Value};

/// A parsed document kept for locating keys; parsing cannot fail once serde accepted the text.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text` for span look-ups (a parse failure leaves only line numbering available).
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// 1-based line where the key path is written, if the path exists in the file.
    pub fn line_of_key(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut span = None;
        let mut item: Option<Node<'_>> = Some(Node::Table(doc.as_table()));
        for seg in segments(path) {
            let node = item?;
            let (next, s) = match seg {
                Seg::Key(k) => node.child(k)?,
                Seg::Index(i) => node.index(i)?,
            };
            if s.is_some() {
                span = s;
            }
            item = Some(next);
        }
        span.map(|s| self.line_of_offset(s.start))
    }

    /// The dotted key path of the innermost key written at or before `offset`.
    pub fn key_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let mut leaves = Vec::new();
        collect(Node::Table(doc.as_table()), String::new(), &mut leaves);
        leaves
            .into_iter()
            .filter(|(_, start)| *start <= offset)
            .max_by_key(|(path, start)| (*start, path.len()))
            .map(|(path, _)| path)
    }
}

/// Every key path with the offset where it is written.
fn collect(node: Node<'_>, prefix: String, out: &mut Vec<(String, usize)>) {
    for (seg, child, span) in node.children() {
        let path = match seg {
            Seg::Key(k) if prefix.is_empty() => k.to_string(),
            Seg::Key(k) => format!("{prefix}.{k}"),
            Seg::Index(i) => format!("{prefix}[{i}]"),
        };
        if let Some(s) = span {
            out.push((path.clone(), s.start));
        }
        collect(child, path, out);
    }
}

enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

fn segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').flat_map(|part| {
        let mut out = Vec::new();
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Seg::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &rest[close + 1..];
            }
        } else {
            out.push(Seg::Key(rest));
        }
        out
    })
}

#[derive(Clone, Copy)]
enum Node<'d> {
    Table(&'d Table),
    Item(&'d Item),
    Value(&'d Value),
}

type Span = Option<std::ops::Range<usize>>;

impl<'d> Node<'d> {
    fn child(self, key: &str) -> Option<(Node<'d>, Span)> {
        match self {
            Node::Table(t) => {
                let (k, v) = t.get_key_value(key)?;
                Some((Node::Item(v), k.span().or_else(|| v.span())))
            }
            Node::Item(Item::Table(t)) => Node::Table(t).child(key),
            Node::Item(Item::Value(v)) => Node::Value(v).child(key),
            Node::Value(Value::InlineTable(t)) => {
                let (k, v) = t.get_key_value(key)?;
                Some((Node::Item(v), k.span().or_else(|| v.span())))
            }
            _ => None,
        }
    }

    fn index(self, i: usize) -> Option<(Node<'d>, Span)> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => {
                let t = a.get(i)?;
                Some((Node::Table(t), t.span()))
            }
            Node::Item(Item::Value(v)) => Node::Value(v).index(i),
            Node::Value(Value::Array(a)) => {
                let v = a.get(i)?;
                Some((Node::Value(v), v.span()))
            }
            _ => None,
        }
    }

    fn children(self) -> Vec<(Seg<'d>, Node<'d>, Span)> {
        match self {
            Node::Table(t) => t
                .iter()
                .filter_map(|(k, _)| {
                    let (key, v) = t.get_key_value(k)?;
                    let span = match v {
                        Item::Table(tt) => tt.span().or_else(|| key.span()),
                        _ => key.span().or_else(|| v.span()),
                    };
                    Some((Seg::Key(key.get()), Node::Item(v), span))
                })
                .collect(),
            Node::Item(Item::Table(t)) => Node::Table(t).children(),
            Node::Item(Item::Value(v)) => Node::Value(v).children(),
            Node::Item(Item::ArrayOfTables(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| (Seg::Index(i), Node::Table(t), t.span()))
                .collect(),
            Node::Value(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (Seg::Index(i), Node::Value(v), v.span()))
                .collect(),
            Node::Value(Value::InlineTable(t)) => t
                .iter()
                .filter_map(|(k, _)| {
                    let (key, v) = t.get_key_value(k)?;
                    Some((Seg::Key(key.get()), Node::Item(v), key.span()))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "listen = \"x\"\n\n[upstream]\nendpoints = [\n  \"a:1\",\n  \"b:\",\n]\n\n[[feature]]\nname = \"login\"\n\n[[feature]]\nname = \"feed\"\n";

    #[test]
    fn finds_lines_of_nested_keys() {
        let l = Locator::new(DOC);
        assert_eq!(l.line_of_key("listen"), Some(1));
        assert_eq!(l.line_of_key("upstream.endpoints"), Some(4));
        assert_eq!(l.line_of_key("upstream.endpoints[1]"), Some(6));
        assert_eq!(l.line_of_key("feature[1].name"), Some(13));
        assert_eq!(l.line_of_key("nope.nothing"), None);
    }

    #[test]
    fn names_the_key_under_an_offset() {
        let l = Locator::new(DOC);
        let off = DOC.find("\"b:\"").unwrap_or(0);
        assert_eq!(l.key_at(off).as_deref(), Some("upstream.endpoints[1]"));
        let off = DOC.find("\"feed\"").unwrap_or(0);
        assert_eq!(l.key_at(off).as_deref(), Some("feature[1].name"));
    }
}
