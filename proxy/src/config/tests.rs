//! Unit tests of the proxy's config file: defaults, field errors, round trip, documented
//! defaults.

use super::*;

fn sample() -> String {
    format!(
        r#"
name = "proxy-1"
worker_listen = "127.0.0.1:9101"
client_listen = "127.0.0.1:9102"
admin_listen = "127.0.0.1:9103"
max_prompt_tokens = 4096
[prices]
completion_multiplier = 50000
[accounts]
default_balance_nano = 1000
balances = {{ "{acct}" = 7 }}
[tee]
kind = "tdx"
[policy]
images = ["{img}"]
rtmr3 = ["{rtmr3}"]
models = {{ "m" = "{model}" }}
"#,
        acct = "ab".repeat(32),
        img = "cd".repeat(32),
        rtmr3 = "ef".repeat(48),
        model = "12".repeat(32)
    )
}

#[test]
fn sample_loads_with_defaults() {
    let c = ConfigFile::parse(&sample(), Path::new("p.toml"))
        .unwrap()
        .into_loaded(Path::new("."))
        .unwrap();
    assert_eq!(c.proxy.name, "proxy-1");
    assert_eq!(c.proxy.prices.completion_multiplier, 50_000);
    assert_eq!(c.proxy.prices.price_per_token, 10);
    assert_eq!(c.proxy.accounts.default_balance_nano, Some(1000));
    assert_eq!(
        c.proxy.worker_keepalive_interval,
        Duration::from_millis(500)
    );
    assert_eq!(c.proxy.max_body_bytes, MAX_BODY_BYTES);
    assert_eq!(c.proxy.client, ClientLimits::default());
    let local = ProxyConfig::local("proxy-1");
    assert_eq!(
        (
            local.worker_keepalive_interval,
            local.worker_keepalive_timeout,
            local.worker_idle_timeout,
            local.handshake_timeout,
            &local.client,
            local.worker_token_budget_percent,
            &local.queue,
            local.shutdown_drain,
        ),
        (
            c.proxy.worker_keepalive_interval,
            c.proxy.worker_keepalive_timeout,
            c.proxy.worker_idle_timeout,
            c.proxy.handshake_timeout,
            &c.proxy.client,
            c.proxy.worker_token_budget_percent,
            &c.proxy.queue,
            c.proxy.shutdown_drain,
        )
    );
    assert!(matches!(c.tee, TeeConfig::Tdx { .. }));
    assert_eq!(c.worker_policy.allowed_images.map(|i| i.len()), Some(1));
}

#[test]
fn errors_name_the_field() {
    let bad = |from: &str, to: &str| {
        let text = sample().replace(from, to);
        ConfigFile::parse(&text, Path::new("p.toml"))
            .and_then(|c| c.into_loaded(Path::new(".")))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("max_prompt_tokens = 4096", "max_prompt_tokens = 0").contains("max_prompt_tokens"));
    assert!(bad("admin_listen = \"127.0.0.1", "admin_listen = \"0.0.0.0").contains("admin_listen"));
    assert!(bad("name = \"proxy-1\"", "name = \"proxy-1\"\nsurprise = 1").contains("surprise"));
    assert!(bad("9102", "9101").contains("worker_listen"));
    // The recording hook is for the simulated platform only.
    assert!(bad(
        "max_prompt_tokens = 4096",
        "max_prompt_tokens = 4096\nrecord_forwarded = \"f.log\""
    )
    .contains("record_forwarded: a development test hook, refused on real TDX"));
    assert!(
        bad(&format!("\"{}\" = 7", "ab".repeat(32)), "\"xyz\" = 7").contains("accounts.balances")
    );
    assert!(bad(&format!("images = [\"{}\"]", "cd".repeat(32)), "").contains("no image"));
    assert!(bad(
        "completion_multiplier = 50000",
        "completion_multiplier = 50000\nworker_fee_per_token = 11"
    )
    .contains("prices.worker_fee_per_token: 11 is more than price_per_token 10"));
    let limit = |line: &str| {
        bad(
            "max_prompt_tokens = 4096",
            &format!("max_prompt_tokens = 4096\n{line}"),
        )
    };
    assert!(limit("client_max_connections = 0").contains("client_max_connections"));
    assert!(
        limit("client_max_connections = 8\nclient_max_connections_per_ip = 9")
            .contains("client_max_connections_per_ip: 9 exceeds client_max_connections 8")
    );
    assert!(limit("client_body_timeout_secs = 0").contains("client_body_timeout_secs"));
    assert!(limit("client_stall_secs = 0").contains("client_stall_secs: must be positive"));
    assert!(limit("client_abandon_interval_secs = 0")
        .contains("client_abandon_interval_secs: must be positive"));
    assert!(limit("client_abandon_interval_secs = 3601")
        .contains("client_abandon_interval_secs: 3601s is more than 3600s"));
    assert!(limit("client_abandon_burst = 100001")
        .contains("client_abandon_burst: 100001 is more than 100000"));
    assert!(
        limit("client_stall_secs = 3601").contains("client_stall_secs: 3601s is more than 3600s")
    );
    assert!(limit("client_h2_max_streams = 0").contains("client_h2_max_streams"));
    assert!(limit("client_h2_stream_window_bytes = 100")
        .contains("client_h2_stream_window_bytes: 100 outside"));
    assert!(
        limit("client_max_header_bytes = 4096").contains("client_max_header_bytes: 4096 outside")
    );
    assert!(limit("client_body_budget_bytes = 1024")
        .contains("client_body_budget_bytes: 1024 is below"));
    assert!(limit("worker_token_budget_percent = 0")
        .contains("worker_token_budget_percent: 0 outside 1..=100"));
    assert!(limit("worker_token_budget_percent = 101")
        .contains("worker_token_budget_percent: 101 outside 1..=100"));
    assert!(limit("queue_timeout_secs = 0").contains("queue_timeout_secs: must be positive"));
    assert!(
        limit("queue_timeout_secs = 3601").contains("queue_timeout_secs: 3601s is more than 3600s")
    );
    assert!(limit("worker_idle_timeout_secs = 0").contains("worker_idle_timeout_secs"));
    assert!(limit("queue_max_per_model = 100001").contains("queue_max_per_model: 100001 is more"));
    assert!(limit("worker_response_timeout_secs = 5").contains("worker_response_timeout_secs"));
    let set = |lines: &str| {
        ConfigFile::parse(
            &sample().replace(
                "max_prompt_tokens = 4096",
                &format!("max_prompt_tokens = 4096\n{lines}"),
            ),
            Path::new("p.toml"),
        )
        .unwrap()
        .into_loaded(Path::new("."))
        .unwrap()
        .proxy
    };
    let p = set("queue_max_per_model = 0\nqueue_timeout_secs = 5\nshutdown_drain_secs = 0\nworker_token_budget_percent = 25\nworker_idle_timeout_secs = 7");
    assert_eq!(
        p.queue,
        QueueLimits {
            max_per_model: 0,
            timeout: Duration::from_secs(5)
        }
    );
    assert_eq!(p.shutdown_drain, Duration::ZERO);
    assert_eq!(p.worker_token_budget_percent, 25);
    assert_eq!(p.worker_idle_timeout, Duration::from_secs(7));
}

/// The file type is the schema both ways: serializing and parsing again gives the same
/// value (what `cocoon-host` relies on when it renders proxy configs).
#[test]
fn serialization_round_trips() {
    let file = ConfigFile::parse(&sample(), Path::new("p.toml")).unwrap();
    let text = toml::to_string(&file).unwrap();
    assert_eq!(ConfigFile::parse(&text, Path::new("p.toml")).unwrap(), file);
    let with_limits = sample().replace(
        "max_prompt_tokens = 4096",
        "max_prompt_tokens = 4096\nclient_max_connections = 8\nhandshake_timeout_secs = 3",
    );
    let file = ConfigFile::parse(&with_limits, Path::new("p.toml")).unwrap();
    let text = toml::to_string(&file).unwrap();
    assert!(text.contains("handshake_timeout_secs = 3"), "{text}");
    assert!(
        !text.contains("worker_keepalive"),
        "unset keys are left out: {text}"
    );
    assert_eq!(ConfigFile::parse(&text, Path::new("p.toml")).unwrap(), file);
}

/// The example in the module docs states the defaults the code uses.
#[test]
fn documented_defaults_match_the_constants() {
    let src = include_str!("../config.rs");
    let example: String = src
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .skip_while(|l| !l.starts_with("```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect();
    let table: toml::Table = toml::from_str(&example).expect("the doc example parses");
    let documented = |key: &str| -> u64 {
        let v = table.get(key).and_then(|v| v.as_integer());
        u64::try_from(v.unwrap_or_else(|| panic!("{key} is not documented"))).unwrap()
    };
    let expected: [(&str, u64); 21] = [
        (
            "worker_keepalive_interval_ms",
            DEFAULT_WORKER_KEEPALIVE_INTERVAL_MS,
        ),
        (
            "worker_keepalive_timeout_ms",
            DEFAULT_WORKER_KEEPALIVE_TIMEOUT_MS,
        ),
        ("worker_idle_timeout_secs", DEFAULT_WORKER_IDLE_TIMEOUT_SECS),
        (
            "worker_token_budget_percent",
            DEFAULT_WORKER_TOKEN_BUDGET_PERCENT.into(),
        ),
        ("queue_max_per_model", DEFAULT_QUEUE_MAX_PER_MODEL.into()),
        ("queue_timeout_secs", DEFAULT_QUEUE_TIMEOUT_SECS),
        ("shutdown_drain_secs", DEFAULT_SHUTDOWN_DRAIN_SECS),
        ("handshake_timeout_secs", DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        (
            "client_max_connections",
            DEFAULT_CLIENT_MAX_CONNECTIONS.into(),
        ),
        (
            "client_max_connections_per_ip",
            DEFAULT_CLIENT_MAX_CONNECTIONS_PER_IP.into(),
        ),
        (
            "client_header_timeout_secs",
            DEFAULT_CLIENT_HEADER_TIMEOUT_SECS,
        ),
        ("client_idle_timeout_secs", DEFAULT_CLIENT_IDLE_TIMEOUT_SECS),
        ("client_body_timeout_secs", DEFAULT_CLIENT_BODY_TIMEOUT_SECS),
        ("client_stall_secs", DEFAULT_CLIENT_STALL_SECS),
        (
            "client_h2_max_streams",
            DEFAULT_CLIENT_H2_MAX_STREAMS.into(),
        ),
        (
            "client_h2_stream_window_bytes",
            DEFAULT_CLIENT_H2_STREAM_WINDOW_BYTES.into(),
        ),
        (
            "client_h2_connection_window_bytes",
            DEFAULT_CLIENT_H2_CONNECTION_WINDOW_BYTES.into(),
        ),
        (
            "client_max_header_bytes",
            DEFAULT_CLIENT_MAX_HEADER_BYTES.into(),
        ),
        ("client_body_budget_bytes", DEFAULT_CLIENT_BODY_BUDGET_BYTES),
        ("client_abandon_burst", DEFAULT_CLIENT_ABANDON_BURST.into()),
        (
            "client_abandon_interval_secs",
            DEFAULT_CLIENT_ABANDON_INTERVAL_SECS,
        ),
    ];
    for (key, value) in expected {
        assert_eq!(documented(key), value, "{key}");
    }
    // And the example is a config the proxy accepts (apart from its placeholders).
    let parsed = ConfigFile::parse(&example, Path::new("doc.toml")).expect("parses");
    assert_eq!(
        parsed.client_body_budget_bytes,
        Some(DEFAULT_CLIENT_BODY_BUDGET_BYTES)
    );
}
