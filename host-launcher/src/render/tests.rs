//! Every config cocoon-host renders, for every role and mode, parses with the service's own
//! parser, reads back as the same value, and passes the service's validation.

use super::*;

use ratls::service_config::open;

fn hex(b: u8, n: usize) -> String {
    format!("{b:02x}").repeat(n)
}

fn proxy_spec() -> ProxySpec {
    ProxySpec {
        name: "p-1".into(),
        worker_listen: "0.0.0.0:9101".parse().unwrap(),
        client_listen: "0.0.0.0:9102".parse().unwrap(),
        admin_listen: "127.0.0.1:9100".parse().unwrap(),
        max_prompt_tokens: 4096,
        default_balance_nano: Some(5),
        workers: Pins {
            images: vec![hex(0xaa, 32)],
            rtmr3: vec![hex(0xbb, 48)],
            models: [("tiny".to_string(), hex(0xcc, 32))].into(),
            ..Pins::default()
        },
    }
}

fn worker_spec(model: ModelFile) -> WorkerSpec {
    WorkerSpec {
        name: "w-1".into(),
        proxies: vec!["10.0.2.2:19101".into()],
        capacity: 4,
        model,
        proxy: Pins {
            images: vec![hex(0xdd, 32)],
            ..Pins::default()
        },
    }
}

fn gguf() -> ModelFile {
    ModelFile::Mistralrs {
        name: "tiny".into(),
        gguf: "/run/cocoon/models/tiny.gguf".into(),
        max_completion_tokens: Some(64),
        max_context: None,
    }
}

fn stub() -> ModelFile {
    ModelFile::Stub {
        name: "cocoon-stub".into(),
        max_completion_tokens: Some(512),
        max_context: None,
        tokens: Some(200),
        tokens_per_second: Some(20.0),
    }
}

fn client_spec(pins: Pins) -> ClientSpec {
    ClientSpec {
        listen: "127.0.0.1:0".parse().unwrap(),
        proxy: "127.0.0.1:19102".into(),
        account_key_file: "client.key".into(),
        workers: Some(pins.clone()),
        pins,
    }
}

/// A directory with the simulated root (what a sim policy names next to the config).
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-render-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let platform = attestation::sim::SimPlatform::from_seed([9; 32]).unwrap();
    std::fs::write(d.join(ROOT_FILE), platform.root_ca_der()).unwrap();
    d
}

/// Writes `text` to `dir/name` and loads it with the service's own loader.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn every_role_and_mode_parses_and_validates() {
    for mode in Mode::ALL {
        let d = dir(&format!("{mode:?}"));

        let proxy = proxy(mode, &proxy_spec());
        let text = to_text(&proxy).unwrap();
        let loaded = open::<proxy::config::ConfigFile>(&write(&d, "proxy.toml", &text))
            .unwrap_or_else(|e| panic!("{mode:?} proxy: {e}\n{text}"))
            .config;
        assert_eq!(loaded.proxy.name, "p-1");
        assert_eq!(loaded.tee, mode.tee(PROXY_REGISTERS_FILE));
        assert_eq!(loaded.worker_policy.roots[0].is_intel(), mode == Mode::Tdx);

        // A stub serves no model on real TDX: the worker refuses it there (its validation).
        let models = match mode {
            Mode::Tdx => vec![gguf()],
            _ => vec![gguf(), stub()],
        };
        for model in models {
            let worker = worker(mode, &worker_spec(model.clone()));
            let text = to_text(&worker).unwrap();
            let loaded = open::<worker::config::WorkerConfigFile>(&write(&d, "w.toml", &text))
                .unwrap_or_else(|e| panic!("{mode:?} worker: {e}\n{text}"))
                .config;
            assert_eq!(loaded.models[0].name, model.name());
            assert_eq!(loaded.tee, mode.tee(WORKER_REGISTERS_FILE));
        }
        let e = open::<worker::config::WorkerConfigFile>(&write(
            &d,
            "w.toml",
            &to_text(&worker(Mode::Tdx, &worker_spec(stub()))).unwrap(),
        ))
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("models[0].engine: refused on real TDX"));

        let pins = Pins {
            images: vec![hex(0xdd, 32)],
            rtmr3: vec![hex(0xee, 48)],
            ..Pins::default()
        };
        let client = client(mode, &client_spec(pins));
        let text = to_text(&client).unwrap();
        let loaded = open::<client::config::ClientConfigFile>(&write(&d, "c.toml", &text))
            .unwrap_or_else(|e| panic!("{mode:?} client: {e}\n{text}"))
            .config;
        assert_eq!(loaded.client.proxy, "127.0.0.1:19102");
        assert_eq!(loaded.key_path, d.join("client.key"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn manifest_pins_render_and_read_back() {
    let pins = Pins {
        manifest: Some(ManifestPin {
            file: "manifest.json".into(),
            publisher_keys: vec![hex(0x11, 32)],
            role: "proxy".into(),
            record: None,
            allow_rollback: false,
        }),
        ..Pins::default()
    };
    let c = client(Mode::SimVm, &client_spec(pins));
    let text = to_text(&c).unwrap();
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["policy"]["manifest"]["role"].as_str(), Some("proxy"));
    assert!(table["policy"].get("images").is_none());
}

#[test]
fn rendering_is_the_types_serialization() {
    // Unset optional keys and policy defaults are left out; set ones are written.
    let text = to_text(&worker(Mode::SimVm, &worker_spec(gguf()))).unwrap();
    let t: toml::Table = text.parse().unwrap();
    assert!(text.starts_with(HEADER));
    assert_eq!(t["models"][0]["engine"].as_str(), Some("mistralrs"));
    assert!(t["models"][0].get("max_context").is_none());
    assert_eq!(
        t["tee"]["runtime_log_file"].as_str(),
        Some(protocol::guest::GUEST_RTMR3_LOG)
    );
    let policy = t["policy"].as_table().unwrap();
    assert_eq!(
        policy.keys().map(String::as_str).collect::<Vec<_>>(),
        ["images", "roots"]
    );
    let tdx = to_text(&proxy(Mode::Tdx, &proxy_spec())).unwrap();
    let t: toml::Table = tdx.parse().unwrap();
    assert_eq!(t["tee"].as_table().unwrap().len(), 1, "kind only");
    assert!(t["policy"].get("roots").is_none(), "intel is the default");
}
