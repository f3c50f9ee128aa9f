//! A small, strict XML 1.0 reader for NVIDIA's RIM documents: elements, attributes, namespaces
//! (Namespaces in XML 1.0), text, character and the five predefined entity references, comments
//! and an XML declaration. No DTD (a `<!DOCTYPE` is refused, so no entity expansion can happen),
//! no CDATA, no processing instructions besides the declaration. Line ends are normalized and
//! attribute values whitespace-normalized as XML 1.0 sections 2.11 and 3.3.3 require, and the
//! tree keeps what Canonical XML 1.1 needs (qualified names, namespaces in scope, text nodes;
//! comments are dropped, as c14n without comments does).
//!
//! Trust boundary: input is untrusted text; limits on size and depth keep work bounded, and
//! every failure is an [`XmlError`] naming the byte offset.

use std::collections::BTreeMap;

/// Largest document accepted.
pub const MAX_XML_BYTES: usize = 4 << 20;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;

const XMLNS_URI: &str = "http://www.w3.org/2000/xmlns/";
const XML_URI: &str = "http://www.w3.org/XML/1998/namespace";

/// A malformed document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xml at byte {offset}: {detail}")]
pub struct XmlError {
    pub offset: usize,
    pub detail: String,
}

/// An element with resolved names. Attribute keys are `(namespace uri or "", local name)`;
/// namespace declarations are not attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub local: String,
    /// The name as written (`prefix:local` or `local`).
    pub qname: String,
    pub attrs: BTreeMap<(String, String), String>,
    /// Attributes as written, in document order.
    pub attr_list: Vec<Attr>,
    /// Namespaces in scope on this element after its own declarations: prefix ("" for the
    /// default namespace) → uri ("" undeclares the default).
    pub in_scope: BTreeMap<String, String>,
    /// Child elements and text, in document order.
    pub nodes: Vec<Node>,
}

/// An attribute with its written and resolved names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub qname: String,
    pub ns: String,
    pub local: String,
    pub value: String,
}

/// Content of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    /// An attribute without namespace.
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .get(&(String::new(), local.to_string()))
            .map(String::as_str)
    }

    /// Child elements.
    pub fn children(&self) -> impl Iterator<Item = &Element> + '_ {
        self.nodes.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// Child elements with this namespace and local name.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children()
            .filter(move |c| c.ns == ns && c.local == local)
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    scopes: Vec<BTreeMap<String, String>>,
}

/// Parses a document into its root element.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    if text.len() > MAX_XML_BYTES {
        return Err(XmlError {
            offset: 0,
            detail: format!("document larger than {MAX_XML_BYTES} bytes"),
        });
    }
    // XML 1.0 section 2.11: CR LF and lone CR become LF before parsing.
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let text = normalized.as_str();
    let mut p = Parser {
        s: text.strip_prefix('\u{feff}').unwrap_or(text),
        pos: 0,
        scopes: Vec::new(),
    };
    if p.rest().starts_with("<?xml") {
        let end = p.find("?>")?;
        p.pos = end + 2;
    }
    p.misc()?;
    if !p.rest().starts_with('<') {
        return Err(p.err("expected the root element"));
    }
    let root = p.element(0)?;
    p.misc()?;
    if p.pos != p.s.len() {
        return Err(p.err("content after the root element"));
    }
    Ok(root)
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn err(&self, detail: impl Into<String>) -> XmlError {
        XmlError {
            offset: self.pos,
            detail: detail.into(),
        }
    }

    fn find(&self, pat: &str) -> Result<usize, XmlError> {
        self.rest()
            .find(pat)
            .map(|i| self.pos + i)
            .ok_or_else(|| self.err(format!("unterminated construct, missing {pat:?}")))
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start_matches([' ', '\t', '\r', '\n']).len();
    }

    /// Whitespace and comments between top-level constructs.
    fn misc(&mut self) -> Result<(), XmlError> {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<!--") {
                self.comment()?;
            } else if self.rest().starts_with("<!") || self.rest().starts_with("<?") {
                return Err(self.err("dtd, cdata and processing instructions are not accepted"));
            } else {
                return Ok(());
            }
        }
    }

    fn comment(&mut self) -> Result<(), XmlError> {
        let body_start = self.pos + 4;
        let end = self.s[body_start..]
            .find("-->")
            .map(|i| body_start + i)
            .ok_or_else(|| self.err("unterminated comment"))?;
        if self.s[body_start..end].contains("--") {
            return Err(self.err("\"--\" inside a comment"));
        }
        self.pos = end + 3;
        Ok(())
    }

    fn name(&mut self) -> Result<&'a str, XmlError> {
        let r = self.rest();
        let len = r.find(|c: char| !is_name_char(c)).unwrap_or(r.len());
        let n = &r[..len];
        let first_ok = n
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
        if !first_ok || n.starts_with(':') || n.ends_with(':') || n.matches(':').count() > 1 {
            return Err(self.err(format!("invalid name {n:?}")));
        }
        self.pos += len;
        Ok(n)
    }

    fn attr_value(&mut self) -> Result<String, XmlError> {
        let quote = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| self.err("attribute value must be quoted"))?;
        self.pos += 1;
        let end = self.find(if quote == '"' { "\"" } else { "'" })?;
        let raw = &self.s[self.pos..end];
        if raw.contains('<') {
            return Err(self.err("'<' in an attribute value"));
        }
        // XML 1.0 section 3.3.3 (no DTD, so every attribute is CDATA): each literal white
        // space character becomes a space; character references are kept as written.
        let v = self.unescape(&raw.replace(['\t', '\n'], " "))?;
        self.pos = end + 1;
        Ok(v)
    }

    fn unescape(&self, raw: &str) -> Result<String, XmlError> {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let semi = after
                .find(';')
                .ok_or_else(|| self.err("unterminated entity reference"))?;
            let ent = &after[..semi];
            let c = match ent {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let code = if let Some(h) = ent.strip_prefix("#x") {
                        u32::from_str_radix(h, 16).ok()
                    } else if let Some(d) = ent.strip_prefix('#') {
                        d.parse::<u32>().ok()
                    } else {
                        None
                    };
                    code.and_then(char::from_u32)
                        .ok_or_else(|| self.err(format!("unknown entity &{ent};")))?
                }
            };
            out.push(c);
            rest = &after[semi + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn resolve(&self, prefix: &str) -> Option<String> {
        if prefix == "xml" {
            return Some(XML_URI.into());
        }
        if prefix.is_empty() {
            let default = self.scopes.iter().rev().find_map(|s| s.get(""));
            return Some(default.cloned().unwrap_or_default());
        }
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(prefix).cloned())
    }

    fn element(&mut self, depth: usize) -> Result<Element, XmlError> {
        if depth >= MAX_DEPTH {
            return Err(self.err("elements nested too deeply"));
        }
        self.pos += 1; // '<'
        let qname = self.name()?;
        let mut raw_attrs: Vec<(&str, String)> = Vec::new();
        let mut decls = BTreeMap::new();
        let self_closing = loop {
            let before = self.pos;
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("/>") {
                self.pos += 2;
                break true;
            }
            if r.starts_with('>') {
                self.pos += 1;
                break false;
            }
            if self.pos == before {
                return Err(self.err("expected whitespace before an attribute"));
            }
            let an = self.name()?;
            self.skip_ws();
            if !self.rest().starts_with('=') {
                return Err(self.err(format!("attribute {an} without '='")));
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.attr_value()?;
            if an == "xmlns" {
                if decls.insert(String::new(), v).is_some() {
                    return Err(self.err("duplicate default namespace declaration"));
                }
            } else if let Some(p) = an.strip_prefix("xmlns:") {
                if v.is_empty() {
                    return Err(self.err(format!("empty namespace for prefix {p}")));
                }
                if p == "xml" || p == "xmlns" || decls.insert(p.to_string(), v).is_some() {
                    return Err(self.err(format!("bad or duplicate declaration of prefix {p}")));
                }
            } else {
                if raw_attrs.iter().any(|(n, _)| *n == an) {
                    return Err(self.err(format!("duplicate attribute {an}")));
                }
                raw_attrs.push((an, v));
            }
        };
        self.scopes.push(decls);
        let (prefix, local) = qname.split_once(':').unwrap_or(("", qname));
        let ns = self
            .resolve(prefix)
            .ok_or_else(|| self.err(format!("undeclared prefix in {qname}")))?;
        let mut attrs = BTreeMap::new();
        let mut attr_list = Vec::new();
        for (an, v) in raw_attrs {
            let key = match an.split_once(':') {
                None => (String::new(), an.to_string()),
                Some((p, l)) => {
                    let uri = self
                        .resolve(p)
                        .ok_or_else(|| self.err(format!("undeclared prefix in {an}")))?;
                    if uri == XMLNS_URI {
                        return Err(self.err("xmlns namespace used for an attribute"));
                    }
                    (uri, l.to_string())
                }
            };
            attr_list.push(Attr {
                qname: an.to_string(),
                ns: key.0.clone(),
                local: key.1.clone(),
                value: v.clone(),
            });
            if attrs.insert(key, v).is_some() {
                return Err(self.err(format!("attribute {an} repeats an expanded name")));
            }
        }
        let mut in_scope = BTreeMap::new();
        for scope in &self.scopes {
            for (p, u) in scope {
                in_scope.insert(p.clone(), u.clone());
            }
        }
        let mut el = Element {
            ns,
            local: local.to_string(),
            qname: qname.to_string(),
            attrs,
            attr_list,
            in_scope,
            nodes: Vec::new(),
        };
        if !self_closing {
            loop {
                let lt = self.find("<")?;
                let text = &self.s[self.pos..lt];
                if text.contains("]]>") {
                    return Err(self.err("\"]]>\" in text"));
                }
                if !text.is_empty() {
                    let t = self.unescape(text)?;
                    match el.nodes.last_mut() {
                        Some(Node::Text(prev)) => prev.push_str(&t),
                        _ => el.nodes.push(Node::Text(t)),
                    }
                }
                self.pos = lt;
                let r = self.rest();
                if r.starts_with("</") {
                    self.pos += 2;
                    let close = self.name()?;
                    if close != qname {
                        return Err(self.err(format!("</{close}> closes <{qname}>")));
                    }
                    self.skip_ws();
                    if !self.rest().starts_with('>') {
                        return Err(self.err("malformed end tag"));
                    }
                    self.pos += 1;
                    break;
                } else if r.starts_with("<!--") {
                    self.comment()?;
                } else if r.starts_with("<!") || r.starts_with("<?") {
                    return Err(self.err("cdata and processing instructions are not accepted"));
                } else {
                    el.nodes.push(Node::Element(self.element(depth + 1)?));
                }
            }
        }
        self.scopes.pop();
        Ok(el)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_and_entities() {
        let doc = r#"<?xml version="1.0"?><a xmlns="u:a" xmlns:b="u:b"><b:c x="1 &amp; 2" b:y='&#x41;'/><!-- c --></a>"#;
        let root = parse(doc).unwrap();
        assert_eq!((root.ns.as_str(), root.local.as_str()), ("u:a", "a"));
        let c = root.children().next().unwrap();
        assert_eq!(c.ns, "u:b");
        assert_eq!(c.attr("x"), Some("1 & 2"));
        assert_eq!(
            c.attrs.get(&("u:b".to_string(), "y".to_string())),
            Some(&"A".to_string())
        );
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "<a>",
            "<a></b>",
            "<a x=1/>",
            "<a x='1' x='2'/>",
            "<!DOCTYPE a><a/>",
            "<a/><b/>",
            "<p:a/>",
            "<a>&bogus;</a>",
            "<a><![CDATA[x]]></a>",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
