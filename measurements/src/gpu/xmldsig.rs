//! Verification of the enveloped XML signature on NVIDIA's RIMs — exactly the one profile NVIDIA
//! uses, nothing else:
//!
//! * `ds:Signature` is a direct child of the document element (W3C XML-DSig 1.1);
//! * SignedInfo canonicalization and the only transform after `enveloped-signature` are
//!   Canonical XML 1.1 without comments (`http://www.w3.org/2006/12/xml-c14n11`);
//! * one `Reference URI=""` (the whole document), digest SHA-384, signature ECDSA P-384 with
//!   SHA-384 (RFC 4051 `xmldsig-more#ecdsa-sha384`, value `r || s`);
//! * the signer's certificate chain in `KeyInfo/X509Data` (leaf first), verified link by link
//!   at a given time to a pinned root (NVIDIA CoRIM signing Root CA in production).
//!
//! Anything else (other algorithms, other references, a second signature, `xml:` attributes
//! whose C14N 1.1 inheritance rules this canonicalizer does not implement) is refused. The
//! canonicalizer covers documents without DTD, CDATA or processing instructions, which is all
//! [`super::xml`] accepts.
//!
//! Trust boundary: RIM text is untrusted; trust comes from the pinned root.

use std::collections::BTreeMap;

use base64::Engine;
use sha2::{Digest, Sha384};

use super::chain;
use super::xml::{self, Element, Node};
use crate::policy::TrustRoot;

const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
const C14N11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const SHA384_DIGEST: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";

/// NVIDIA CoRIM signing Root CA (PEM), the root of NVIDIA's RIM signing chains. SHA-256 of its
/// DER is checked by a test.
pub const NVIDIA_CORIM_ROOT_CA_PEM: &[u8] =
    include_bytes!("../../roots/nvidia_corim_signing_root_ca.pem");

/// Why a RIM signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlDsigError {
    #[error("rim xml: {0}")]
    Xml(#[from] xml::XmlError),
    #[error("rim signature structure: {0}")]
    Structure(String),
    #[error("rim signature uses unsupported {what} {got:?}")]
    Unsupported { what: &'static str, got: String },
    #[error("rim digest mismatch: signed {signed}, document {computed}")]
    Digest { signed: String, computed: String },
    #[error("rim signature does not verify with the signer certificate")]
    Signature,
    #[error("rim signer chain: {0}")]
    Chain(String),
}

/// A verified RIM signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RimSigner {
    pub subject: String,
    /// Name of the pinned root the chain ended at.
    pub root_name: String,
    /// The verified signer chain, leaf first (for OCSP, [`super::ocsp::check_rim_chain_ocsp`]).
    pub chain: Vec<x509_cert::Certificate>,
}

/// NVIDIA's CoRIM signing root as a [`TrustRoot`].
pub fn nvidia_corim_root() -> TrustRoot {
    let der = super::pem_to_der(NVIDIA_CORIM_ROOT_CA_PEM).unwrap_or_default();
    TrustRoot::new("nvidia-corim-signing-root-ca", der)
}

fn structure(s: impl Into<String>) -> XmlDsigError {
    XmlDsigError::Structure(s.into())
}

fn ds_one<'a>(parent: &'a Element, local: &'a str) -> Result<&'a Element, XmlDsigError> {
    let mut it = parent.children_named(DS_NS, local);
    match (it.next(), it.next()) {
        (Some(e), None) => Ok(e),
        _ => Err(structure(format!(
            "expected exactly one ds:{local} in ds:{}",
            parent.local
        ))),
    }
}

fn algorithm<'a>(
    parent: &'a Element,
    local: &'a str,
    want: &str,
) -> Result<&'a Element, XmlDsigError> {
    let e = ds_one(parent, local)?;
    let got = e.attr("Algorithm").unwrap_or_default();
    if got != want {
        return Err(XmlDsigError::Unsupported {
            what: "algorithm",
            got: got.to_string(),
        });
    }
    Ok(e)
}

fn text_of(e: &Element) -> String {
    e.nodes
        .iter()
        .filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        })
        .collect()
}

fn b64(e: &Element, what: &str) -> Result<Vec<u8>, XmlDsigError> {
    let t: String = text_of(e).split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|err| structure(format!("{what}: base64: {err}")))
}

fn has_xml_attrs(e: &Element) -> bool {
    e.attr_list.iter().any(|a| a.ns == XML_NS) || e.children().any(has_xml_attrs)
}

/// Verifies the enveloped signature of a RIM at time `at` against `roots`.
pub fn verify_rim_signature(
    text: &str,
    at: u64,
    roots: &[TrustRoot],
) -> Result<RimSigner, XmlDsigError> {
    let doc = xml::parse(text)?;
    if has_xml_attrs(&doc) {
        return Err(structure("xml: attributes are not supported"));
    }
    let sig = ds_one(&doc, "Signature")?;
    let signed_info = ds_one(sig, "SignedInfo")?;
    algorithm(signed_info, "CanonicalizationMethod", C14N11)?;
    algorithm(signed_info, "SignatureMethod", ECDSA_SHA384)?;
    let reference = ds_one(signed_info, "Reference")?;
    if reference.attr("URI") != Some("") {
        return Err(XmlDsigError::Unsupported {
            what: "reference uri",
            got: reference.attr("URI").unwrap_or("(none)").to_string(),
        });
    }
    let transforms: Vec<&str> = ds_one(reference, "Transforms")?
        .children()
        .map(|t| t.attr("Algorithm").unwrap_or_default())
        .collect();
    if transforms != [ENVELOPED, C14N11] {
        return Err(XmlDsigError::Unsupported {
            what: "transforms",
            got: transforms.join(" "),
        });
    }
    algorithm(reference, "DigestMethod", SHA384_DIGEST)?;
    let signed_digest = b64(ds_one(reference, "DigestValue")?, "digest value")?;

    let mut canonical = String::new();
    c14n(&doc, &BTreeMap::new(), Some(sig), &mut canonical);
    let computed = Sha384::digest(canonical.as_bytes());
    if computed.as_slice() != signed_digest.as_slice() {
        return Err(XmlDsigError::Digest {
            signed: hex::encode(&signed_digest),
            computed: hex::encode(computed),
        });
    }

    let certs = ds_one(ds_one(sig, "KeyInfo")?, "X509Data")?
        .children_named(DS_NS, "X509Certificate")
        .map(|c| {
            let der = b64(c, "certificate")?;
            chain::parse_der_cert(&der).map_err(|e| XmlDsigError::Chain(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = certs
        .first()
        .ok_or_else(|| structure("no signer certificate"))?;
    let root_ders: Vec<Vec<u8>> = roots.iter().map(|r| r.der.clone()).collect();
    let root_index = chain::verify_chain(&certs, certs.len(), &root_ders, at)
        .map_err(|e| XmlDsigError::Chain(e.to_string()))?;

    let value = b64(ds_one(sig, "SignatureValue")?, "signature value")?;
    let key = chain::p384_key(leaf).map_err(XmlDsigError::Chain)?;
    let mut signed_info_c14n = String::new();
    c14n(signed_info, &BTreeMap::new(), None, &mut signed_info_c14n);
    key.verify_fixed(signed_info_c14n.as_bytes(), &value)
        .map_err(|_| XmlDsigError::Signature)?;
    Ok(RimSigner {
        subject: chain::subject(leaf),
        root_name: roots[root_index].name.clone(),
        chain: certs.clone(),
    })
}

fn escape_text(t: &str, out: &mut String) {
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attr(t: &str, out: &mut String) {
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Canonical XML 1.1 (without comments) of `el` and its descendants, `rendered` being the
/// namespaces already rendered by output ancestors (empty for an apex element), leaving out
/// `exclude` (the enveloped signature).
fn c14n(
    el: &Element,
    rendered: &BTreeMap<String, String>,
    exclude: Option<&Element>,
    out: &mut String,
) {
    out.push('<');
    out.push_str(&el.qname);
    let mut now = rendered.clone();
    // Namespace nodes, sorted by prefix (the default namespace first).
    for (prefix, uri) in &el.in_scope {
        let already = rendered.get(prefix);
        if prefix.is_empty() && uri.is_empty() {
            if already.is_some_and(|u| !u.is_empty()) {
                out.push_str(" xmlns=\"\"");
                now.insert(String::new(), String::new());
            }
            continue;
        }
        if already != Some(uri) {
            out.push_str(" xmlns");
            if !prefix.is_empty() {
                out.push(':');
                out.push_str(prefix);
            }
            out.push_str("=\"");
            escape_attr(uri, out);
            out.push('"');
            now.insert(prefix.clone(), uri.clone());
        }
    }
    // Attributes, sorted by namespace uri (none first), then local name.
    let mut attrs: Vec<&xml::Attr> = el.attr_list.iter().collect();
    attrs.sort_by(|a, b| (a.ns.as_str(), a.local.as_str()).cmp(&(b.ns.as_str(), b.local.as_str())));
    for a in attrs {
        out.push(' ');
        out.push_str(&a.qname);
        out.push_str("=\"");
        escape_attr(&a.value, out);
        out.push('"');
    }
    out.push('>');
    for node in &el.nodes {
        match node {
            Node::Text(t) => escape_text(t, out),
            Node::Element(child) => {
                if !exclude.is_some_and(|x| std::ptr::eq(x, child)) {
                    c14n(child, &now, exclude, out);
                }
            }
        }
    }
    out.push_str("</");
    out.push_str(&el.qname);
    out.push('>');
}
