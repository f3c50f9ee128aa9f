//! Unit tests of the worker config: parsing, field errors, path resolution, TDX refusals, round trip.

use super::*;

fn image() -> String {
    "ab".repeat(32)
}

fn base_toml() -> String {
    format!(
        r#"
name = "worker-1"
proxies = ["127.0.0.1:9101", "[::1]:9102"]
capacity = 8

[tee]
kind = "sim"
platform_file = "sim-platform.json"
registers_file = "regs.json"

[policy]
images = ["{}"]

[[models]]
name = "smollm2-135m"
engine = "mistralrs"
gguf = "models/smol.gguf"
max_completion_tokens = 512

[[models]]
name = "big"
engine = "upstream"
url = "http://127.0.0.1:8000"
upstream_model = "org/big"
model_hash = "{}"
max_completion_tokens = 1024
max_context = 8192

[[models]]
name = "stub"
engine = "stub"
tokens = 5
tokens_per_second = 0.0
"#,
        image(),
        "CD".repeat(32)
    )
}

fn parse(text: &str) -> Result<WorkerConfig, ConfigError> {
    WorkerConfig::from_toml(text, Path::new("/etc/w/worker.toml"), Path::new("/etc/w"))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn full_config_parses_and_resolves_paths() {
    let c = parse(&base_toml()).unwrap();
    assert_eq!(c.name, "worker-1");
    assert_eq!(c.proxies.len(), 2);
    assert_eq!(c.proxies[1].port(), 9102);
    assert_eq!(c.capacity, 8);
    assert_eq!(c.price_coefficient_milli, 1000);
    assert_eq!(c.cert_lifetime, ratls::cert::DEFAULT_LIFETIME);
    assert_eq!(c.status_listen, None);
    assert_eq!(c.stream_keepalive, Some(Duration::from_secs(5)));
    assert_eq!(c.stream_stall, Some(Duration::from_secs(300)));
    assert_eq!(c.shutdown_drain, Duration::from_secs(30));
    assert_eq!(c.base_dir, Path::new("/etc/w"));
    assert!(matches!(c.tee, TeeConfig::Sim { .. }));
    assert_eq!(c.models.len(), 3);
    assert_eq!(
        c.models[0].engine,
        EngineSpec::MistralRs {
            gguf: "/etc/w/models/smol.gguf".into()
        }
    );
    assert_eq!(c.models[0].max_completion_tokens, Some(512));
    match &c.models[1].engine {
        EngineSpec::Upstream { model_hash, .. } => assert_eq!(model_hash, &"cd".repeat(32)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.models[2].engine,
        EngineSpec::Stub {
            tokens: 5,
            tokens_per_second: 0.0
        }
    );
}

#[test]
fn status_listen_is_an_address() {
    let c = parse(&base_toml().replace(
        "capacity = 8",
        "capacity = 8\nstatus_listen = \"0.0.0.0:9104\"",
    ))
    .unwrap();
    assert_eq!(c.status_listen, Some("0.0.0.0:9104".parse().unwrap()));
}

#[test]
fn keepalive_and_drain_are_configurable() {
    let c = parse(&base_toml().replace(
        "capacity = 8",
        "capacity = 8\nstream_keepalive_secs = 0\nshutdown_drain_secs = 2",
    ))
    .unwrap();
    assert_eq!(c.stream_keepalive, None, "0 turns keepalives off");
    assert_eq!(c.shutdown_drain, Duration::from_secs(2));
    let c = parse(&base_toml().replace("capacity = 8", "capacity = 8\nstream_keepalive_secs = 9"))
        .unwrap();
    assert_eq!(c.stream_keepalive, Some(Duration::from_secs(9)));
    let c =
        parse(&base_toml().replace("capacity = 8", "capacity = 8\nstream_stall_secs = 0")).unwrap();
    assert_eq!(c.stream_stall, None, "0 turns the stall limit off");
    let c = parse(&base_toml().replace("capacity = 8", "capacity = 8\nstream_stall_secs = 15"))
        .unwrap();
    assert_eq!(c.stream_stall, Some(Duration::from_secs(15)));
    let e = err(&base_toml().replace("capacity = 8", "capacity = 8\nstream_stall_secs = 3601"));
    assert!(e.starts_with("stream_stall_secs"), "{e}");
}

#[test]
fn unknown_fields_are_refused_with_their_name() {
    let e = err(&base_toml().replace("capacity = 8", "capacity = 8\nsurprise = 1"));
    assert!(e.contains("surprise"), "{e}");
    let e = err(&base_toml().replace("\ntokens = 5", "\ntokens = 5\nspeed = 2"));
    assert!(e.contains("speed"), "{e}");
    let e = err(&base_toml().replace("engine = \"stub\"", "engine = \"vllm\""));
    assert!(e.contains("vllm"), "{e}");
}

#[test]
fn field_errors_name_the_field() {
    let cases = [
        ("capacity = 8", "capacity = 0", "capacity"),
        (
            "capacity = 8",
            "capacity = 8\nprice_coefficient_milli = 0",
            "price_coefficient_milli",
        ),
        (
            "capacity = 8",
            "capacity = 8\ncert_lifetime_secs = 10",
            "cert_lifetime_secs",
        ),
        (
            "capacity = 8",
            "capacity = 8\nstream_keepalive_secs = 3601",
            "stream_keepalive_secs",
        ),
        (
            "capacity = 8",
            "capacity = 8\nshutdown_drain_secs = 3601",
            "shutdown_drain_secs",
        ),
        ("name = \"worker-1\"", "name = \"a b\"", "name"),
        (
            "capacity = 8",
            "capacity = 8\nstatus_listen = \"localhost:9104\"",
            "status_listen",
        ),
        ("\"[::1]:9102\"", "\"proxy.example:9102\"", "proxies[1]"),
        ("\"[::1]:9102\"", "\"127.0.0.1:9101\"", "proxies[1]"),
        (
            "proxies = [\"127.0.0.1:9101\", \"[::1]:9102\"]",
            "proxies = []",
            "proxies",
        ),
        (
            "name = \"big\"",
            "name = \"smollm2-135m\"",
            "models[1].name",
        ),
        ("name = \"stub\"", "name = \"has space\"", "models[2].name"),
        ("gguf = \"models/smol.gguf\"\n", "", "models[0].gguf"),
        (
            "\ntokens = 5",
            "\ntokens = 5\ngguf = \"x\"",
            "models[2].gguf",
        ),
        ("url = \"http://127.0.0.1:8000\"\n", "", "models[1].url"),
        ("max_context = 8192\n", "", "models[1].max_context"),
        (
            "max_completion_tokens = 1024\n",
            "",
            "models[1].max_completion_tokens",
        ),
        (
            "max_completion_tokens = 512",
            "max_completion_tokens = 0",
            "models[0].max_completion_tokens",
        ),
        (
            "tokens_per_second = 0.0",
            "tokens_per_second = -1.0",
            "models[2].tokens_per_second",
        ),
    ];
    for (from, to, name) in cases {
        let text = base_toml().replacen(from, to, 1);
        assert_ne!(text, base_toml(), "{from}");
        let e = err(&text);
        assert!(e.starts_with(&format!("{name}: ")), "{name}: {e}");
    }
    let e = err(&base_toml().replace("capacity = 8", "capacity = 8\nstream_keepalive_secs = 3601"));
    assert_eq!(e, "stream_keepalive_secs: 3601 (0..=3600)");
    let e = err(&base_toml().replace(&"CD".repeat(32), "xyz"));
    assert!(e.starts_with("models[1].model_hash: "), "{e}");
    let e = err(&base_toml().replace(&image(), "zz"));
    assert!(e.contains("policy.images"), "{e}");
}

#[test]
fn load_reads_the_file_and_uses_its_directory() {
    let dir = std::env::temp_dir().join(format!("cocoon-worker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.toml");
    std::fs::write(&path, base_toml()).unwrap();
    let c = WorkerConfig::load(&path).unwrap();
    assert_eq!(c.base_dir, dir);
    let missing = WorkerConfig::load(&dir.join("nope.toml")).unwrap_err();
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn build_applies_limits_and_reports_missing_features() {
    let c =
        parse(&base_toml().replace("\ntokens = 5", "\ntokens = 5\nmax_completion_tokens = 100"))
            .unwrap();
    let stub = c.models[2].build(4).await.unwrap();
    assert_eq!(stub.advert.name, "stub");
    assert_eq!(stub.advert.max_completion_tokens, 100);
    assert_eq!(stub.advert.max_context, 4096, "the stub's default context");
    // The stub's context is what it is configured with, larger than its default too.
    let long =
        parse(&base_toml().replace("\ntokens = 5", "\ntokens = 5\nmax_context = 100000")).unwrap();
    let stub = long.models[2].build(4).await.unwrap();
    assert_eq!(
        (stub.advert.max_context, stub.advert.max_completion_tokens),
        (100_000, 100_000)
    );
    let up = c.models[1].build(4).await.unwrap();
    assert_eq!(up.advert.max_completion_tokens, 1024);
    assert_eq!(up.advert.model_hash, "cd".repeat(32));
    // Without the feature the in-process engine is not built; with it, the file is missing.
    let e = c.models[0].build(4).await.unwrap_err().to_string();
    assert!(e.contains("smollm2-135m"), "{e}");
}

/// Regression (trust hole): a genuine worker image on real TDX configured by the host with an
/// upstream engine on a host URL sent prompts out of the TD in plaintext, or trusted a
/// simulated root for its proxies.
#[test]
fn real_tdx_refuses_what_only_development_may_say() {
    let tdx = |t: &str| {
        t.replace(
            "kind = \"sim\"\nplatform_file = \"sim-platform.json\"\nregisters_file = \"regs.json\"",
            "kind = \"tdx\"",
        )
    };
    // The base config has a loopback upstream and a stub: the stub is refused on TDX.
    let e = err(&tdx(&base_toml()));
    assert!(
        e.starts_with("models[2].engine: refused on real TDX"),
        "{e}"
    );
    let no_stub = base_toml().replace(
        "\n[[models]]\nname = \"stub\"\nengine = \"stub\"\ntokens = 5\ntokens_per_second = 0.0\n",
        "",
    );
    assert!(parse(&tdx(&no_stub)).is_ok());
    assert!(parse(&no_stub).is_ok());
    let remote = no_stub.replace("http://127.0.0.1:8000", "http://10.0.2.2:8000");
    assert!(parse(&remote).is_ok(), "the simulated platform allows it");
    let e = err(&tdx(&remote));
    assert!(e.starts_with("models[1].url: refused on real TDX"), "{e}");
    let sim_root = no_stub.replace("[policy]\n", "[policy]\nroots = [\"sim-root.der\"]\n");
    let e = err(&tdx(&sim_root));
    assert!(e.contains("policy.roots: refused on real TDX"), "{e}");
}

#[test]
fn loopback_urls() {
    for ok in [
        "http://127.0.0.1:8000",
        "http://127.8.9.1/v1",
        "https://localhost",
        "http://LOCALHOST:1/x?y",
        "http://[::1]:8000/v1",
    ] {
        assert!(url_is_loopback(ok), "{ok}");
    }
    for bad in [
        "http://10.0.2.2:8000",
        "http://127.0.0.1.evil.example",
        "http://user@127.0.0.1",
        "http://[::1]x:80",
        "ftp://127.0.0.1",
        "http://[::2]:80",
        "127.0.0.1:80",
        "http://\u{e9}\u{e9}",
        "http://",
    ] {
        assert!(!url_is_loopback(bad), "{bad}");
    }
}

/// The file type is the schema both ways: serializing and parsing again (with the real parser,
/// entry by entry) gives the same value, for every engine.
#[test]
fn serialization_round_trips() {
    let path = Path::new("/etc/w/worker.toml");
    let file = <WorkerConfigFile as ServiceConfig>::parse(&base_toml(), path).unwrap();
    assert_eq!(file.models.len(), 3);
    let text = toml::to_string(&file).unwrap();
    assert_eq!(
        <WorkerConfigFile as ServiceConfig>::parse(&text, path).unwrap(),
        file
    );
    assert!(text.contains("engine = \"upstream\""), "{text}");
    assert!(!text.contains("api_key"), "unset keys are left out: {text}");
}

#[test]
fn gpu_section_kinds_defaults_and_refusals() {
    let with = |section: &str| format!("{}\n[gpu]\n{section}\n", base_toml());
    let seed = "11".repeat(32);
    let c = parse(&with(&format!(
        "kind = \"sim\"\nseed = \"{seed}\"\ncount = 2"
    )))
    .unwrap();
    let Some(GpuSpec::Sim {
        seed: s,
        gpus,
        ocsp_url: None,
    }) = c.gpu
    else {
        panic!("{:?}", c.gpu)
    };
    assert_eq!(s, [0x11; 32]);
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0].driver_version, "550.127.05");
    assert_ne!(gpus[0].device_id, gpus[1].device_id);

    let c = parse(&with(
        "kind = \"nvml\"\nmin_driver = \"550.127.05\"\nocsp_url = \"http://10.0.2.2:8082\"",
    ))
    .unwrap();
    let Some(GpuSpec::Nvml { policy, ocsp_url }) = c.gpu else {
        panic!("{:?}", c.gpu)
    };
    assert!(
        policy.references.is_none(),
        "no refs: chain, signature and nonce only"
    );
    assert_eq!(policy.roots, vec![measurements::gpu::nvidia_root()]);
    assert!(policy.min_driver.is_some());
    assert_eq!(ocsp_url.as_deref(), Some("http://10.0.2.2:8082"));

    for (section, field) in [
        ("kind = \"sim\"\nseed = \"zz\"", "gpu.seed"),
        (
            &*format!("kind = \"sim\"\nseed = \"{seed}\"\ncount = 0"),
            "gpu.count",
        ),
        (
            &*format!("kind = \"sim\"\nseed = \"{seed}\"\nvbios = \"1.2\""),
            "gpu.vbios",
        ),
        ("kind = \"nvml\"\nmin_driver = \"new\"", "gpu.min_driver"),
        ("kind = \"nvml\"\nrefs = \"missing.json\"", "gpu.refs"),
        ("kind = \"nvml\"\nocsp_url = \"ftp://x\"", "gpu.ocsp_url"),
        ("kind = \"nvml\"\nocsp_url = \"not a url\"", "gpu.ocsp_url"),
    ] {
        let e = err(&with(section));
        assert!(e.starts_with(field), "{section}: {e}");
    }
    assert!(err(&with("kind = \"cuda\"")).contains("cuda"));
    assert!(err(&with("kind = \"nvml\"\nsurprise = 1")).contains("surprise"));

    // Real TDX refuses simulated GPUs.
    let no_stub = base_toml().replace(
        "\n[[models]]\nname = \"stub\"\nengine = \"stub\"\ntokens = 5\ntokens_per_second = 0.0\n",
        "",
    );
    let tdx = no_stub.replace(
        "kind = \"sim\"\nplatform_file = \"sim-platform.json\"\nregisters_file = \"regs.json\"",
        "kind = \"tdx\"",
    );
    let e = err(&format!(
        "{tdx}\n[gpu]\nkind = \"sim\"\nseed = \"{seed}\"\n"
    ));
    assert!(e.starts_with("gpu.kind: refused on real TDX"), "{e}");
    assert!(parse(&format!("{tdx}\n[gpu]\nkind = \"nvml\"\n")).is_ok());
}
