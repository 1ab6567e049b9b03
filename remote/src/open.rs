//! Which remote a manifest uses, and opening it: the URL's scheme picks the
//! object_store backend, whose credentials and endpoint come from the
//! environment (`AWS_*` for S3, then the AWS CLI's files: [`aws_files`];
//! `GOOGLE_*` for GCS, `AZURE_*` for Azure).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreScheme, RetryConfig};
use pipe_engine::{Manifest, UsageError};

use crate::aws_files;

/// The environment variable that names the remote; it wins over `remote:`.
pub const REMOTE_ENV: &str = "PIPE_REMOTE";

/// Client settings shared by the cloud backends: a dead remote must not stall
/// a run (it fails within a few seconds), a slow one must still move 8 MiB
/// chunks (one request may take a minute).
const CLIENT_CONFIG: [(&str, &str); 2] = [("connect_timeout", "2s"), ("timeout", "60s")];

/// Bounded retries with backoff: about 2 s in all before a request gives up.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// The remote's URL for `manifest`: `PIPE_REMOTE` when set and not empty,
/// else the manifest's `remote:` key, with where it came from (for errors).
pub fn remote_url(manifest: &Manifest) -> Option<(String, String)> {
    match std::env::var(REMOTE_ENV) {
        Ok(url) if !url.trim().is_empty() => Some((url.trim().to_string(), REMOTE_ENV.into())),
        _ => manifest.remote.as_ref().map(|(url, span)| {
            let origin = format!("{}:{}:{}", manifest.path.display(), span.line, span.col);
            (url.trim().to_string(), origin)
        }),
    }
}

/// Opens the object store at `url`, returning it and the prefix inside it.
pub(crate) fn open_store(url: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = url::Url::parse(url).map_err(|e| {
        UsageError(format!(
            "`{url}` is not a remote URL ({e}); write e.g. s3://bucket/prefix"
        ))
    })?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|_| {
        UsageError(format!(
            "`{url}` is not a supported remote; use s3://bucket/prefix (or gs://, az://, file:///folder)"
        ))
    })?;
    macro_rules! cloud {
        ($builder:expr) => {{
            let mut builder = $builder.with_url(url).with_retry(retry_config());
            for (key, value) in CLIENT_CONFIG {
                let key = key
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{e} (internal error)"))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(
                builder
                    .build()
                    .map_err(|e| UsageError(format!("cannot configure the remote `{url}`: {e}")))?,
            ) as Arc<dyn ObjectStore>
        }};
    }
    let store = match scheme {
        ObjectStoreScheme::AmazonS3 => cloud!(aws_files::complete(AmazonS3Builder::from_env())?),
        ObjectStoreScheme::GoogleCloudStorage => cloud!(GoogleCloudStorageBuilder::from_env()),
        ObjectStoreScheme::MicrosoftAzure => cloud!(MicrosoftAzureBuilder::from_env()),
        ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()) as Arc<dyn ObjectStore>,
        _ => {
            return Err(UsageError(format!(
                "`{url}` is not a supported remote; use s3://bucket/prefix (or gs://, az://, file:///folder)"
            ))
            .into());
        }
    };
    Ok((store, prefix))
}
