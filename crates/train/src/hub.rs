//! Model files from the Hugging Face Hub, through the `hf-hub` crate's
//! blocking client, into the usual Hugging Face cache.
//!
//! A model whose `config.json` and weights are already cached is used without
//! any network access. Otherwise the Hub's host is first probed with a short
//! timeout (the client itself has none, so an unreachable network would
//! otherwise hang), and every failure becomes one sentence saying how to work
//! offline. The probe is skipped when a proxy is configured in the
//! environment, since the client then connects through the proxy.

use crate::error::{Result, TrainError};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;
use std::collections::BTreeSet;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use tessera_t5::{INDEX_FILE, WEIGHTS_FILE};

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// How long one TCP connection attempt of the reachability probe may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole probe (name resolution included) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Files fetched when the repository has them (the tokenizer).
const OPTIONAL_FILES: [&str; 2] = ["tokenizer.json", "spiece.model"];
/// Environment variables through which the client finds a proxy.
const PROXY_VARIABLES: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// A Hub endpoint and the cache folder its files go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// Base URL, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// The hub cache folder (`HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Show download progress bars on stderr.
    pub progress: bool,
}

impl Hub {
    /// The endpoint and cache the environment configures (`HF_ENDPOINT`, `HF_HOME`).
    pub fn from_env() -> Hub {
        Hub {
            endpoint: std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into()),
            cache_dir: Cache::from_env().path().clone(),
            progress: true,
        }
    }

    /// The snapshot folder holding model `id`'s `config.json`, weights and
    /// (when the repository has them) tokenizer files: from the cache, else
    /// downloaded.
    pub fn fetch(&self, id: &str) -> Result<PathBuf> {
        if let Some(dir) = self.cached(id) {
            return Ok(dir);
        }
        let fail = |reason: String| TrainError::Hub {
            id: id.to_string(),
            reason,
        };
        self.probe().map_err(fail)?;
        self.download(id).map_err(fail)
    }

    /// The cached snapshot folder of `id` if its config and all its weights are there.
    fn cached(&self, id: &str) -> Option<PathBuf> {
        let repo = Cache::new(self.cache_dir.clone()).model(id.to_string());
        let config = repo.get("config.json")?;
        let complete = match repo.get(INDEX_FILE) {
            Some(index) => shards_of(&index)
                .ok()?
                .iter()
                .all(|s| repo.get(s).is_some()),
            None => repo.get(WEIGHTS_FILE).is_some(),
        };
        if !complete {
            return None;
        }
        config.parent().map(Path::to_path_buf)
    }

    fn download(&self, id: &str) -> std::result::Result<PathBuf, String> {
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_progress(self.progress)
            .build()
            .map_err(|e| e.to_string())?;
        let repo = api.model(id.to_string());
        let info = repo.info().map_err(|e| e.to_string())?;
        let files: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        let get = |file: &str| repo.get(file).map_err(|e| format!("{file}: {e}"));
        let config = get("config.json")?;
        if files.contains(INDEX_FILE) {
            for shard in shards_of(&get(INDEX_FILE)?)? {
                get(&shard)?;
            }
        } else if files.contains(WEIGHTS_FILE) {
            get(WEIGHTS_FILE)?;
        } else {
            return Err(
                "the repository has no model.safetensors (tessera reads safetensors weights only)"
                    .into(),
            );
        }
        for file in OPTIONAL_FILES.iter().filter(|f| files.contains(*f)) {
            get(file)?;
        }
        config
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| "the cache returned a file without a folder".into())
    }

    /// Checks within [`PROBE_TIMEOUT`] that the endpoint's host accepts a TCP connection.
    fn probe(&self) -> std::result::Result<(), String> {
        if PROXY_VARIABLES
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            return Ok(());
        }
        let (host, port) = host_and_port(&self.endpoint)?;
        let (tx, rx) = mpsc::channel();
        let target = host.clone();
        std::thread::spawn(move || {
            let _ = tx.send(connect(&target, port));
        });
        rx.recv_timeout(PROBE_TIMEOUT).unwrap_or_else(|_| {
            Err(format!(
                "{host} did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            ))
        })
    }
}

/// The shard file names a `model.safetensors.index.json` lists.
fn shards_of(index: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
    let map = value["weight_map"]
        .as_object()
        .ok_or_else(|| format!("{} has no weight_map", index.display()))?;
    let files: BTreeSet<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    Ok(files.into_iter().collect())
}

/// Host and port of an `http(s)://host[:port][/path]` URL.
fn host_and_port(url: &str) -> std::result::Result<(String, u16), String> {
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else {
        return Err(format!("the endpoint {url} is not an http(s) URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|p| (host.to_string(), p))
            .map_err(|_| format!("the endpoint {url} has an invalid port")),
        None if !authority.is_empty() => Ok((authority.to_string(), default_port)),
        None => Err(format!("the endpoint {url} has no host")),
    }
}

fn connect(host: &str, port: u16) -> std::result::Result<(), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {host}:{port}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_model;
    use std::time::Instant;

    fn unreachable_hub(cache: &Path) -> Hub {
        Hub {
            endpoint: "http://127.0.0.1:9".into(),
            cache_dir: cache.to_path_buf(),
            progress: false,
        }
    }

    #[test]
    fn offline_downloads_fail_fast_with_one_helpful_sentence() {
        let cache = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = unreachable_hub(cache.path())
            .fetch("google/flan-t5-small")
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < PROBE_TIMEOUT, "{:?}", start.elapsed());
        assert!(
            err.starts_with(
                "cannot download google/flan-t5-small from the Hugging Face Hub (cannot connect to 127.0.0.1:9"
            ),
            "{err}"
        );
        assert!(err.ends_with("pass --model /path/to/folder"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn cached_models_need_no_network() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        let snapshot = repo.join("snapshots/abc123");
        tiny_model(64).save(&snapshot).unwrap();
        let hub = unreachable_hub(cache.path());
        assert_eq!(hub.fetch("org/tiny").unwrap(), snapshot);
        // Without its weights the cached copy is incomplete: the Hub is asked.
        std::fs::remove_file(snapshot.join(WEIGHTS_FILE)).unwrap();
        assert!(hub.fetch("org/tiny").is_err());
    }

    #[test]
    fn endpoints_are_split_into_host_and_port() {
        assert_eq!(
            host_and_port("https://huggingface.co").unwrap(),
            ("huggingface.co".into(), 443)
        );
        assert_eq!(
            host_and_port("http://mirror.local:8080/hf").unwrap(),
            ("mirror.local".into(), 8080)
        );
        assert!(host_and_port("ftp://x").is_err());
        assert!(host_and_port("http://:x").is_err());
    }
}
