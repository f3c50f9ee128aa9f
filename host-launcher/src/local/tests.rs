//! Unit tests of the local layout: pins between roles, determinism, loading with the services' loaders.

use super::*;
use crate::registers::binary_digest;
use attestation::config::TeeConfig;
use ratls::config::{PolicyConfig, Required};
use ratls::Role;
use sha2::Digest;

fn plan(model: ModelPlan) -> Plan {
    Plan {
        proxy_worker_listen: "127.0.0.1:9101".parse().unwrap(),
        proxy_client_listen: "127.0.0.1:9102".parse().unwrap(),
        proxy_admin_listen: "127.0.0.1:9103".parse().unwrap(),
        client_listen: "127.0.0.1:8080".parse().unwrap(),
        proxy: RoleMeasurement::new(Role::Proxy, binary_digest(b"proxy binary")),
        worker: RoleMeasurement::new(Role::Worker, binary_digest(b"worker binary")),
        model,
        max_completion_tokens: 512,
        worker_capacity: 4,
        payments: None,
        gpu: None,
    }
}

fn gguf() -> ModelPlan {
    ModelPlan::Gguf {
        name: "smollm2-135m-instruct".into(),
        path: PathBuf::from("/cache/models/it's \"quoted\".gguf"),
        sha256: "5a".repeat(32),
    }
}

fn table(text: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn keys(t: &toml::Table) -> Vec<&str> {
    t.keys().map(String::as_str).collect()
}

fn section<T: serde::de::DeserializeOwned>(t: &toml::Table, name: &str) -> T {
    t[name].clone().try_into().unwrap()
}

/// The [policy] pins `image` under the simulated root written next to the config, and loads
/// under the pin requirements of the role that reads it.
fn check_policy(
    t: &toml::Table,
    image: &measurements::ImageHash,
    dir: &Path,
    reader: Role,
) -> measurements::Policy {
    let p: PolicyConfig = section(t, "policy");
    assert!(!p.allow_any_config);
    let policy = p.load(dir, Required::by(reader)).unwrap();
    let out = policy.clone();
    assert_eq!(
        policy
            .allowed_images
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![*image]
    );
    assert!(!policy.roots[0].is_intel());
    assert!(!policy.allow_debug);
    out
}

/// The RTMR3 the process reading `config` (its `[tee]` section) quotes.
fn quoted_rtmr3(dir: &Path, config: &str) -> [u8; 48] {
    let text = std::fs::read_to_string(dir.join(config)).unwrap();
    let tee: TeeConfig = section(&table(&text), "tee");
    let sha: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
    tee.open_for_config(dir, sha)
        .unwrap()
        .device
        .registers()
        .unwrap()
        .rtmr[3]
}

#[test]
fn configs_pin_the_other_role_and_parse() {
    let p = plan(gguf());
    let dir = std::env::temp_dir().join(format!("cocoon-host-local-{}", std::process::id()));
    let platform = SimPlatform::from_seed([3; 32]).unwrap();
    write(&dir, &p, &platform).unwrap();

    let proxy = table(&std::fs::read_to_string(dir.join(PROXY_CONFIG)).unwrap());
    assert_eq!(
        keys(&proxy),
        vec![
            "accounts",
            "admin_listen",
            "client_listen",
            "max_prompt_tokens",
            "name",
            "policy",
            "tee",
            "worker_listen"
        ]
    );
    assert_eq!(proxy["client_listen"].as_str(), Some("127.0.0.1:9102"));
    assert_eq!(
        proxy["accounts"]["default_balance_nano"].as_integer(),
        Some(LOCAL_BALANCE_NANO as i64)
    );
    let proxy_policy = check_policy(&proxy, &p.worker.image_hash, &dir, Role::Proxy);
    // The proxy pins exactly the RTMR3 the worker process quotes for its config, and its model.
    assert_eq!(
        proxy_policy
            .allowed_rtmr3
            .clone()
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![quoted_rtmr3(&dir, WORKER_CONFIG)]
    );
    assert!(proxy_policy
        .check_model("smollm2-135m-instruct", &"5a".repeat(32))
        .is_ok());
    assert!(proxy_policy
        .check_model("smollm2-135m-instruct", &"00".repeat(32))
        .is_err());
    let tee: TeeConfig = section(&proxy, "tee");
    let opened = tee.open(&dir).unwrap();
    let regs = opened.device.registers().unwrap();
    assert_eq!(regs.image_hash(), p.proxy.image_hash);

    let worker = table(&std::fs::read_to_string(dir.join(WORKER_CONFIG)).unwrap());
    assert_eq!(
        keys(&worker),
        vec![
            "capacity",
            "models",
            "name",
            "policy",
            "price_coefficient_milli",
            "proxies",
            "tee"
        ]
    );
    assert_eq!(worker["proxies"][0].as_str(), Some("127.0.0.1:9101"));
    let worker_policy = check_policy(&worker, &p.proxy.image_hash, &dir, Role::Worker);
    assert!(worker_policy.allowed_rtmr3.is_none(), "no pin cycle");
    let tee: TeeConfig = section(&worker, "tee");
    assert_eq!(
        tee.open(&dir)
            .unwrap()
            .device
            .registers()
            .unwrap()
            .image_hash(),
        p.worker.image_hash
    );
    let model = &worker["models"][0];
    assert_eq!(model["engine"].as_str(), Some("mistralrs"));
    assert_eq!(
        model["gguf"].as_str(),
        Some("/cache/models/it's \"quoted\".gguf")
    );

    let client = table(&std::fs::read_to_string(dir.join(CLIENT_CONFIG)).unwrap());
    assert_eq!(
        keys(&client),
        vec![
            "account_key_file",
            "listen",
            "policy",
            "proxy",
            "receipts_file",
            "worker_policy"
        ]
    );
    // Requests are sealed to the worker: its image is pinned (encryption defaults to on).
    assert_eq!(
        client["worker_policy"]["images"][0].as_str(),
        Some(p.worker.image_hash.to_string().as_str())
    );
    assert_eq!(client["proxy"].as_str(), Some("127.0.0.1:9102"));
    assert_eq!(client["listen"].as_str(), Some("127.0.0.1:8080"));
    let client_policy = check_policy(&client, &p.proxy.image_hash, &dir, Role::Client);
    assert_eq!(
        client_policy
            .allowed_rtmr3
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![quoted_rtmr3(&dir, PROXY_CONFIG)]
    );

    assert_eq!(
        std::fs::read(dir.join(ROOT_FILE)).unwrap(),
        platform.root_ca_der()
    );
    assert!(dir.join(LOG_DIR).is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stub_model_and_rendering_is_deterministic() {
    let p = plan(ModelPlan::Stub {
        name: "cocoon-stub".into(),
    });
    assert_eq!(render(&p).unwrap(), render(&p).unwrap());
    let worker = table(&worker_toml(&p).unwrap());
    let model = &worker["models"][0];
    assert_eq!(model["engine"].as_str(), Some("stub"));
    assert_eq!(model["name"].as_str(), Some("cocoon-stub"));
    assert!(model.get("gguf").is_none());
    // Changing a binary changes the pinned hash in the peer's config.
    let mut other = p.clone();
    other.proxy = RoleMeasurement::new(Role::Proxy, binary_digest(b"rebuilt proxy"));
    assert_ne!(worker_toml(&p).unwrap(), worker_toml(&other).unwrap());
    assert_ne!(
        client_toml(&p, "r", "r").unwrap(),
        client_toml(&other, "r", "r").unwrap()
    );
    assert_eq!(
        proxy_toml(&p, "r").unwrap(),
        proxy_toml(&other, "r").unwrap()
    );
    // A changed worker config changes the RTMR3 the proxy pins, and so the proxy config,
    // and so the RTMR3 the client pins.
    let mut bigger = p.clone();
    bigger.worker_capacity += 1;
    let (a, b) = (render(&p).unwrap(), render(&bigger).unwrap());
    let text = |r: &[Rendered], n: &str| r.iter().find(|f| f.name == n).unwrap().text.clone();
    assert_ne!(text(&a, PROXY_CONFIG), text(&b, PROXY_CONFIG));
    assert_ne!(text(&a, CLIENT_CONFIG), text(&b, CLIENT_CONFIG));
}

#[test]
fn urls_are_written_atomically() {
    let dir = std::env::temp_dir().join(format!("cocoon-host-urls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let urls = Urls {
        client: "http://127.0.0.1:8080/v1".into(),
        admin: "http://127.0.0.1:9103".into(),
        jsonstats: "http://127.0.0.1:9103/jsonstats".into(),
        proxy_workers: "127.0.0.1:9101".into(),
        proxy_clients: "127.0.0.1:9102".into(),
        model: "m".into(),
        account: "ab".repeat(32),
        proxy_image: "00".repeat(32),
        worker_image: "11".repeat(32),
        dir: dir.display().to_string(),
        pids: Pids {
            launcher: 1,
            proxy: Some(2),
            worker: None,
            client: Some(4),
        },
        chain: None,
        client_contract: None,
        payments: None,
        prices: None,
    };
    write_urls(&dir, &urls).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(URLS_FILE)).unwrap()).unwrap();
    assert_eq!(v["jsonstats"], "http://127.0.0.1:9103/jsonstats");
    assert_eq!(v["pids"]["proxy"], 2);
    assert!(!dir.join("urls.json.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every file `launch --local` writes loads with its service's own loader (parse, validate:
/// policy roots read, client key created) for both engines, and is the serialization of the
/// service's config type (it reads back as the same value).
#[test]
fn written_configs_load_with_the_services_loaders() {
    use ratls::service_config::{open, ServiceConfig};
    for model in [
        gguf(),
        ModelPlan::Stub {
            name: "cocoon-stub".into(),
        },
    ] {
        let mut p = plan(model);
        // The stub network with two simulated GPUs; the gguf one without.
        let gpus = matches!(p.model, ModelPlan::Stub { .. }).then_some(2);
        p.gpu = gpus.map(|count| SimGpuPlan {
            seed: [5; 32],
            count,
            ocsp_listen: Some("127.0.0.1:9199".parse().unwrap()),
        });
        let dir = std::env::temp_dir().join(format!(
            "cocoon-host-load-{}-{}",
            p.model.name(),
            std::process::id()
        ));
        let platform = SimPlatform::from_seed([4; 32]).unwrap();
        write(&dir, &p, &platform).unwrap();
        let text = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();

        let proxy = open::<proxy::config::ConfigFile>(&dir.join(PROXY_CONFIG)).unwrap();
        assert_eq!(proxy.config.proxy.client_listen, p.proxy_client_listen);
        let worker_rtmr3 = config_rtmr3(&text(WORKER_CONFIG));
        assert_eq!(
            proxy::config::ConfigFile::parse(&text(PROXY_CONFIG), Path::new("p")).unwrap(),
            proxy_config(&p, &worker_rtmr3)
        );

        let worker = open::<worker::config::WorkerConfigFile>(&dir.join(WORKER_CONFIG)).unwrap();
        assert_eq!(worker.config.models[0].name, p.model.name());
        assert_eq!(
            <worker::config::WorkerConfigFile as ServiceConfig>::parse(
                &text(WORKER_CONFIG),
                Path::new("w")
            )
            .unwrap(),
            worker_config(&p)
        );

        let client = open::<client::config::ClientConfigFile>(&dir.join(CLIENT_CONFIG)).unwrap();
        assert!(client.config.key_created);
        let proxy_rtmr3 = config_rtmr3(&text(PROXY_CONFIG));
        let worker_rtmr3 = config_rtmr3(&text(WORKER_CONFIG));
        assert_eq!(
            client::config::ClientConfigFile::parse(&text(CLIENT_CONFIG), Path::new("c")).unwrap(),
            client_config(&p, &proxy_rtmr3, &worker_rtmr3)
        );
        assert!(client.config.client.worker_policy.is_some());

        // Simulated GPUs: the worker collects evidence under the simulated NVIDIA root, and
        // both of its verifiers require exactly that many GPUs under that root.
        let proxy_gpu = proxy.config.worker_policy.gpu.clone();
        let client_gpu = client
            .config
            .client
            .worker_policy
            .as_ref()
            .and_then(|w| w.gpu.clone());
        match gpus {
            Some(count) => {
                let Some(worker::config::GpuSpec::Sim { gpus, ocsp_url, .. }) = &worker.config.gpu
                else {
                    panic!("worker [gpu]: {:?}", worker.config.gpu);
                };
                assert_eq!(gpus.len(), count as usize);
                assert_eq!(ocsp_url.as_deref(), Some("http://127.0.0.1:9199/ocsp"));
                for g in [proxy_gpu.unwrap(), client_gpu.unwrap()] {
                    assert_eq!(g.gpu_count, Some(count as usize));
                    assert!(
                        g.require_ocsp,
                        "the launcher's responder answers for the chains"
                    );
                    assert_eq!(
                        g.roots[0].der,
                        std::fs::read(dir.join(GPU_ROOT_FILE)).unwrap()
                    );
                    assert_eq!(
                        g.references.unwrap().sets[0],
                        gpus[0].reference_values().sets[0]
                    );
                }
            }
            None => {
                assert!(worker.config.gpu.is_none());
                assert!(proxy_gpu.is_none() && client_gpu.is_none());
                assert!(!dir.join(GPU_ROOT_FILE).exists());
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn payments_add_the_ledger_keys_payments_and_payout_sections() {
    let mut p = plan(ModelPlan::Stub {
        name: "stub".into(),
    });
    let owner = ton::address::Addr::basechain([0xa1; 32]);
    p.payments = Some(PaymentsPlan {
        proxy: proxy::payments::PaymentsConfig::new(
            "http://127.0.0.1:1/api/v2",
            &ton::params::ParamsV3::reference(),
            &owner,
            &owner,
        ),
        worker: worker::config::PayoutFile {
            chain_url: "http://127.0.0.1:1/api/v2".into(),
            chain_api_key_env: None,
            owner: owner.to_string(),
            wallet_key: "worker-wallet.key".into(),
            wallet_owner: None,
            state_file: None,
            voucher_value_nano: None,
            wallet_timeout_ms: None,
        },
        client_account: "key = \"client-wallet.key\"\n".into(),
    });
    // to_text re-reads each file with the service's own parser
    let proxy = proxy_toml(&p, "00").unwrap();
    for section in ["[ledger]", "[keys]", "[payments]"] {
        assert!(proxy.contains(section), "{section} missing:\n{proxy}");
    }
    assert!(!proxy.contains("default_balance_nano"), "{proxy}");
    let worker = worker_toml(&p).unwrap();
    assert!(worker.contains("[payout]"), "{worker}");
    // the client checks its charges against its receipts (account.toml beside its config)
    let client = client_toml(&p, "00", "00").unwrap();
    assert!(
        client.contains("[account]") && client.contains("settings = \"account.toml\""),
        "{client}"
    );
    // and without payments, none of them
    let plain = plan(ModelPlan::Stub {
        name: "stub".into(),
    });
    let proxy = proxy_toml(&plain, "00").unwrap();
    assert!(!proxy.contains("[payments]") && proxy.contains("default_balance_nano"));
    assert!(!worker_toml(&plain).unwrap().contains("[payout]"));
    assert!(!client_toml(&plain, "00", "00")
        .unwrap()
        .contains("[account]"));
}
