//! dcap-qvl reports failures as anyhow text; `measurements::verify::classify` turns that text
//! into typed reasons by substring. A dcap-qvl release that rewords a message would silently
//! change reason codes, so:
//!
//! * the version is pinned (`=0.7.1` in the root manifest) and the lock file is checked here;
//! * every message dcap-qvl 0.7.1 can produce is a reviewed entry of
//!   `fixtures/dcap_qvl_0.7.1_messages.json` with the reason code it must map to, checked
//!   through `classify` under each context chain dcap-qvl wraps it in;
//! * when the dcap-qvl source is in the cargo registry, the messages are extracted again with
//!   the rules below and must equal the fixture, so a new or reworded message fails here until
//!   it is reviewed.
//!
//! Extraction rules (`extract`): every `.rs` file under dcap-qvl's `src/` except the modules
//! cocoon's feature set (`std`, `rustcrypto`, `default-x509`) does not compile (`collateral.rs`
//! and `http.rs`: feature `report`; `python.rs`: `python`; `ffi.rs`: `go`) and except
//! `#[cfg(test)]` items; comments are ignored. At each `bail!(`, `anyhow!(`, `ensure!(`
//! (kind `message`), `.context(`, `.with_context(` (kind `context`) and `scale::Error::from(`
//! (kind `decode`: a quote decoding error, reported inside "Failed to decode quote: …"), the
//! first string literal inside the call's parentheses is the message template (`{…}` are
//! format placeholders). Errors of dependencies that dcap-qvl forwards without context (the
//! root CA revocation check returns webpki's error as is) are listed by hand in the fixture's
//! `passthrough` section.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use measurements::verify::classify;
use serde::Deserialize;

const VERSION: &str = "0.7.1";

/// Modules of dcap-qvl 0.7.1 that cocoon's features leave out (see `src/lib.rs` there).
const EXCLUDED_FILES: &[&str] = &["collateral.rs", "http.rs", "python.rs", "ffi.rs"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[serde(rename = "crate")]
    krate: String,
    version: String,
    #[serde(default)]
    notes: Vec<String>,
    messages: Vec<Entry>,
    passthrough: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    kind: String,
    /// The template as written in dcap-qvl (or, for passthrough, the dependency's text).
    text: String,
    /// The reason code `classify` must give.
    reason: String,
    /// Context chains dcap-qvl wraps this in, innermost first; `[]` is "no context".
    /// Absent: no context only.
    #[serde(default)]
    contexts: Option<Vec<Vec<String>>>,
    /// A realistic instance of the text, when substituting "0" for placeholders is not.
    #[serde(default)]
    example: Option<String>,
    /// Why the reason is what it is (required for the generic `verification` code).
    #[serde(default)]
    note: Option<String>,
    /// Chains under which the text gets another reason (the context names the cause).
    #[serde(default)]
    also: Vec<Also>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Also {
    chain: Vec<String>,
    reason: String,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/dcap_qvl_{VERSION}_messages.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `{…}` placeholders replaced by "0".
fn instantiate(template: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in template.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push('0');
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The error dcap-qvl would return for `entry` under `chain`.
fn error_for(entry: &Entry, chain: &[String]) -> anyhow::Error {
    let text = entry
        .example
        .clone()
        .unwrap_or_else(|| instantiate(&entry.text));
    let mut err = match entry.kind.as_str() {
        "message" | "passthrough" => anyhow::Error::msg(text),
        // A context wraps some dependency's error (its text carries no keyword).
        "context" => anyhow::Error::msg("source error").context(text),
        // scale-codec errors surface inside the quote decoding context.
        "decode" => anyhow::Error::msg(text).context("Failed to decode quote"),
        other => panic!("unknown kind {other}"),
    };
    for c in chain {
        err = err.context(c.clone());
    }
    err
}

fn check_entries(entries: &[Entry]) -> Vec<String> {
    let mut failures = Vec::new();
    for entry in entries {
        let chains = entry.contexts.clone().unwrap_or_else(|| vec![vec![]]);
        assert!(!chains.is_empty(), "{}: empty contexts", entry.text);
        if entry.reason == "verification" {
            assert!(
                entry.note.as_deref().is_some_and(|n| !n.is_empty()),
                "{}: the generic code needs a note saying why",
                entry.text
            );
        }
        let cases = chains
            .iter()
            .map(|c| (c, &entry.reason))
            .chain(entry.also.iter().map(|a| (&a.chain, &a.reason)));
        for (chain, reason) in cases {
            let err = error_for(entry, chain);
            let got = classify(&err);
            if got.code() != reason {
                failures.push(format!(
                    "{:?} -> {} ({got}), expected {reason}",
                    format!("{err:#}"),
                    got.code(),
                ));
            }
        }
    }
    failures
}

#[test]
fn every_dcap_qvl_message_maps_to_its_reviewed_reason() {
    let f = fixture();
    assert_eq!(f.krate, "dcap-qvl");
    assert_eq!(f.version, VERSION);
    assert!(!f.notes.is_empty());
    let mut failures = check_entries(&f.messages);
    failures.extend(check_entries(&f.passthrough));
    assert!(
        failures.is_empty(),
        "misclassified:\n{}",
        failures.join("\n")
    );
}

#[test]
fn generic_code_is_rare_and_justified() {
    let f = fixture();
    let generic: Vec<_> = f
        .messages
        .iter()
        .chain(&f.passthrough)
        .filter(|e| e.reason == "verification")
        .map(|e| e.text.as_str())
        .collect();
    // Each is justified by its note (checked above); a new one needs review here too.
    assert!(generic.len() <= 5, "{generic:?}");
}

#[test]
fn locked_dcap_qvl_version_is_the_pinned_one() {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let versions: Vec<&str> = text
        .split("[[package]]")
        .filter(|p| p.lines().any(|l| l.trim() == "name = \"dcap-qvl\""))
        .filter_map(|p| {
            p.lines()
                .find_map(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
        })
        .collect();
    assert_eq!(versions, [VERSION], "dcap-qvl versions in Cargo.lock");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .unwrap();
    assert!(
        manifest
            .lines()
            .any(|l| l.starts_with("dcap-qvl = { version = \"=0.7.1\"")),
        "the root manifest must pin dcap-qvl = \"=0.7.1\""
    );
}

#[test]
fn fixture_lists_exactly_the_messages_of_the_source() {
    let Some(src) = dcap_qvl_source() else {
        println!(
            "note: dcap-qvl-{VERSION} source not found under $CARGO_HOME/registry/src; skipped"
        );
        return;
    };
    let extracted = extract(&src);
    let f = fixture();
    let listed: BTreeSet<(String, String)> = f
        .messages
        .iter()
        .map(|e| (e.kind.clone(), e.text.clone()))
        .collect();
    assert_eq!(
        listed.len(),
        f.messages.len(),
        "duplicate entries in the fixture"
    );
    let added: Vec<_> = extracted.difference(&listed).collect();
    let removed: Vec<_> = listed.difference(&extracted).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "dcap-qvl {VERSION} messages differ from the fixture (review each, give it a reason):\n\
         in the source, not in the fixture: {added:#?}\n\
         in the fixture, not in the source: {removed:#?}"
    );
}

fn dcap_qvl_source() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let registry = home.join("registry/src");
    std::fs::read_dir(registry)
        .ok()?
        .flatten()
        .map(|d| d.path().join(format!("dcap-qvl-{VERSION}/src")))
        .find(|p| p.join("lib.rs").is_file())
}

/// The (kind, template) pairs of every message site in `src` (see the module docs).
fn extract(src: &Path) -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let mut out = BTreeSet::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if file.parent() == Some(src) && EXCLUDED_FILES.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = drop_cfg_test(&blank_comments(&text));
        for (kind, template) in message_sites(&code) {
            out.insert((kind.to_string(), template));
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src` with comments replaced by spaces (string and char literals kept as they are).
fn blank_comments(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(if chars[i] == '\n' { '\n' } else { ' ' });
                    i += 1;
                }
            }
        } else if c == '"' {
            let end = string_end(&chars, i);
            out.extend(&chars[i..end]);
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), else a lifetime.
            let end = if next == Some('\\') {
                (i + 2..chars.len())
                    .find(|&j| chars[j] == '\'')
                    .map_or(chars.len(), |j| j + 1)
            } else if chars.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1
            };
            out.extend(&chars[i..end]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Index just past the string literal starting at `chars[start] == '"'`.
fn string_end(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// `code` without the items marked `#[cfg(test)]` (the attribute up to the end of the item's
/// brace block).
fn drop_cfg_test(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let Some(open) = item.find('{') else {
            return out;
        };
        let end = matching(item, open, '{', '}').unwrap_or(item.len());
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// Index just past the bracket closing the one at `s[open..]` (`l`), skipping string
/// literals.
fn matching(s: &str, open: usize, l: char, r: char) -> Option<usize> {
    let chars: Vec<char> = s[open..].chars().collect();
    let mut depth = 0usize;
    let mut k = 0;
    let mut bytes = 0;
    while k < chars.len() {
        let c = chars[k];
        if c == '"' {
            let end = string_end(&chars, k);
            bytes += chars[k..end].iter().map(|c| c.len_utf8()).sum::<usize>();
            k = end;
            continue;
        }
        bytes += c.len_utf8();
        if c == l {
            depth += 1;
        } else if c == r {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(open + bytes);
            }
        }
        k += 1;
    }
    None
}

const SITES: &[(&str, &str)] = &[
    ("bail!(", "message"),
    ("anyhow!(", "message"),
    ("ensure!(", "message"),
    (".context(", "context"),
    (".with_context(", "context"),
    ("scale::Error::from(", "decode"),
];

/// The first string literal inside the parentheses of each call site in `code`.
fn message_sites(code: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (pattern, kind) in SITES {
        for (at, _) in code.match_indices(pattern) {
            let open = at + pattern.len() - 1;
            let Some(close) = matching(code, open, '(', ')') else {
                continue;
            };
            if let Some(lit) = first_string_literal(&code[open..close]) {
                out.push((*kind, lit));
            }
        }
    }
    out
}

/// The value of the first string literal in `s` (escapes `\"`, `\\`, `\n`, line continuations
/// resolved).
fn first_string_literal(s: &str) -> Option<String> {
    let start = s.find('"')?;
    let chars: Vec<char> = s[start..].chars().collect();
    let end = string_end(&chars, 0);
    let body = &chars[1..end.saturating_sub(1)];
    let mut out = String::new();
    let mut i = 0;
    while i < body.len() {
        if body[i] == '\\' && i + 1 < body.len() {
            match body[i + 1] {
                'n' => out.push('\n'),
                '\n' => {
                    i += 2;
                    while i < body.len() && body[i].is_whitespace() {
                        i += 1;
                    }
                    continue;
                }
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    Some(out)
}

#[test]
fn extraction_rules_on_a_sample() {
    let sample = r#"
        // bail!("in a comment");
        fn f() -> Result<()> {
            let c = '"';
            let x = y.context("Failed to parse (x)")?;
            ensure!(a == b, "Count mismatch: expected {}, got {}", a, b);
            g().with_context(|| format!("No id {wanted} found"))?;
            bail!("Unsupported \"type\": {value}");
            Err(scale::Error::from("Invalid body size"))
        }
        #[cfg(test)]
        mod tests { fn t() { bail!("test only"); } }
        fn h() { anyhow::ensure!(n <= 4, "CRL number too large"); }
    "#;
    let code = drop_cfg_test(&blank_comments(sample));
    let mut got = message_sites(&code);
    got.sort();
    let want = [
        ("context", "Failed to parse (x)"),
        ("context", "No id {wanted} found"),
        ("decode", "Invalid body size"),
        ("message", "CRL number too large"),
        ("message", "Count mismatch: expected {}, got {}"),
        ("message", "Unsupported \"type\": {value}"),
    ];
    let got: Vec<(&str, &str)> = got.iter().map(|(k, t)| (*k, t.as_str())).collect();
    assert_eq!(got, want);
}

#[test]
fn print_extracted_messages_when_asked() {
    // COCOON_PRINT_DCAP_QVL_MESSAGES=1 prints what the source yields, as fixture skeletons.
    if std::env::var("COCOON_PRINT_DCAP_QVL_MESSAGES").as_deref() != Ok("1") {
        return;
    }
    let src = dcap_qvl_source().expect("dcap-qvl source in the cargo registry");
    for (kind, text) in extract(&src) {
        let err = match kind.as_str() {
            "context" => anyhow::Error::msg("source error").context(instantiate(&text)),
            "decode" => anyhow::Error::msg(instantiate(&text)).context("Failed to decode quote"),
            _ => anyhow::Error::msg(instantiate(&text)),
        };
        println!(
            "{{\"kind\": {}, \"text\": {}, \"reason\": \"{}\"}},",
            serde_json::to_string(&kind).unwrap(),
            serde_json::to_string(&text).unwrap(),
            classify(&err).code()
        );
    }
}
