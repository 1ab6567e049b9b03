//! The AWS CLI's shared files, `~/.aws/credentials` and `~/.aws/config`, for what the
//! environment leaves unset: object_store reads only the environment (and instance
//! metadata), while teams keep their keys and endpoints in these files.
//!
//! As the AWS CLI: the profile is `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`, else
//! `default`); the files are
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` (else `~/.aws/credentials` and
//! `~/.aws/config`); the credentials file's sections are `[name]`, the config file's
//! `[profile name]` (and `[default]`); a key in the credentials file wins over the same key in
//! the config file. The environment wins over both: the key pair (with its session token) comes
//! from the files only when `AWS_ACCESS_KEY_ID` is unset, the region only when `AWS_REGION`
//! and `AWS_DEFAULT_REGION` are, the endpoint only when `AWS_ENDPOINT_URL` (and its spellings)
//! is. An `endpoint_url` on plain `http://` is allowed as written, as the AWS CLI allows it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object_store::aws::AmazonS3Builder;
use pipe_engine::UsageError;

/// The settings of one profile that pipe uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
}

/// The sections of an INI file: name → key → value.
type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// `builder` (from the environment) completed from the shared files.
pub(crate) fn complete(builder: AmazonS3Builder) -> anyhow::Result<AmazonS3Builder> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let profile = load(&env, home.as_deref())?;
    Ok(profile.apply(builder, &env))
}

/// The profile the environment selects, read from the files it names.
fn load(env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> anyhow::Result<Profile> {
    let file = |var: &str, default: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".aws").join(default)))
    };
    let named = ["AWS_PROFILE", "AWS_DEFAULT_PROFILE"]
        .into_iter()
        .find_map(|var| Some((var, env(var)?)));
    let name = named
        .as_ref()
        .map_or_else(|| "default".to_string(), |(_, n)| n.clone());
    let mut found = false;
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    // The credentials file first: its keys win.
    if let Some(path) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
        && let Some(sections) = read(&path)?
        && let Some(section) = sections.get(&name)
    {
        found = true;
        settings.extend(section.clone());
    }
    if let Some(path) = file("AWS_CONFIG_FILE", "config")
        && let Some(sections) = read(&path)?
    {
        let titles = [format!("profile {name}"), name.clone()];
        let titles = if name == "default" {
            &titles[..]
        } else {
            &titles[..1]
        };
        for section in titles.iter().filter_map(|t| sections.get(t)) {
            found = true;
            for (key, value) in section {
                settings.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
    if let Some((var, named)) = &named
        && !found
    {
        return Err(UsageError(format!(
            "{var} names the profile `{named}`, which neither the AWS credentials file nor the config file has; \
             add it (`aws configure --profile {named}`) or unset {var}"
        ))
        .into());
    }
    let mut take = |key: &str| settings.remove(key);
    let profile = Profile {
        access_key_id: take("aws_access_key_id"),
        secret_access_key: take("aws_secret_access_key"),
        session_token: take("aws_session_token"),
        region: take("region"),
        endpoint_url: take("endpoint_url"),
    };
    if profile.access_key_id.is_some() != profile.secret_access_key.is_some()
        && env("AWS_ACCESS_KEY_ID").is_none()
    {
        let (has, lacks) = if profile.access_key_id.is_some() {
            ("aws_access_key_id", "aws_secret_access_key")
        } else {
            ("aws_secret_access_key", "aws_access_key_id")
        };
        return Err(UsageError(format!(
            "the AWS profile `{name}` has {has} but no {lacks}; add it to the credentials file, \
             or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ))
        .into());
    }
    Ok(profile)
}

impl Profile {
    /// `builder` with what the environment does not set taken from this profile.
    fn apply(
        self,
        mut builder: AmazonS3Builder,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> AmazonS3Builder {
        let unset = |names: &[&str]| names.iter().all(|n| env(n).is_none());
        if unset(&["AWS_ACCESS_KEY_ID"])
            && let (Some(key), Some(secret)) = (self.access_key_id, self.secret_access_key)
        {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
            if let Some(token) = self.session_token {
                builder = builder.with_token(token);
            }
        }
        if unset(&["AWS_REGION", "AWS_DEFAULT_REGION"])
            && let Some(region) = self.region
        {
            builder = builder.with_region(region);
        }
        if unset(&["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"])
            && let Some(endpoint) = self.endpoint_url
        {
            if endpoint.starts_with("http://") && unset(&["AWS_ALLOW_HTTP"]) {
                builder = builder.with_allow_http(true);
            }
            builder = builder.with_endpoint(endpoint);
        }
        builder
    }
}

/// The sections of the INI file at `path`; `None` when there is no such file.
fn read(path: &Path) -> anyhow::Result<Option<Sections>> {
    match fs_err::read_to_string(path) {
        Ok(text) => parse(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(UsageError(format!("cannot read {}: {e}", path.display())).into()),
    }
}

/// Parses the AWS CLI's INI dialect: `[section]`, `key = value`, `#` and `;` comment lines,
/// and indented lines under a key (nested settings such as `s3 =`, which pipe ignores).
fn parse(path: &Path, text: &str) -> anyhow::Result<Sections> {
    let mut sections = Sections::new();
    let mut current: Option<String> = None;
    let mut after_key = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let bad = |what: &str| -> anyhow::Error {
            UsageError(format!(
                "{}:{}: {what}; fix or remove the line (it is read for the remote's AWS settings)",
                path.display(),
                i + 1
            ))
            .into()
        };
        if raw.starts_with([' ', '\t']) && after_key {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .ok_or_else(|| bad(&format!("`{line}` opens a [section] but does not close it")))?;
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            if name.is_empty() {
                return Err(bad("`[]` names no section"));
            }
            sections.entry(name.clone()).or_default();
            current = Some(name);
            after_key = false;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(&format!(
                "`{line}` is neither a [section] nor a `key = value` line"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(bad(&format!("`{line}` has no key before `=`")));
        }
        let Some(section) = &current else {
            return Err(bad(&format!(
                "`{key}` comes before any [section]; put it under [default] or [profile NAME]"
            )));
        };
        sections
            .entry(section.clone())
            .or_default()
            .insert(key.to_string(), value.trim().to_string());
        after_key = true;
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Sections {
        parse(Path::new("config"), text).unwrap()
    }

    fn error(text: &str) -> String {
        parse(Path::new("/h/.aws/config"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn sections_keys_comments_and_nested_settings() {
        let sections = parsed(
            "# top\n[default]\nregion = eu-west-1\n; note\n\n[profile team]\n\
             aws_access_key_id=AKIA\ns3 =\n  addressing_style = path\nendpoint_url = http://h:9000\n",
        );
        assert_eq!(sections["default"]["region"], "eu-west-1");
        assert_eq!(sections["profile team"]["aws_access_key_id"], "AKIA");
        assert_eq!(sections["profile team"]["s3"], "");
        assert_eq!(sections["profile team"]["endpoint_url"], "http://h:9000");
        assert!(!sections["profile team"].contains_key("addressing_style"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = error("[default]\nregion = x\nthis line is wrong\n");
        assert!(
            err.starts_with("/h/.aws/config:3: `this line is wrong` is neither"),
            "{err}"
        );
        let err = error("\n[profile team\n");
        assert!(err.starts_with("/h/.aws/config:2: "), "{err}");
        assert!(err.contains("does not close"), "{err}");
        let err = error("region = x\n");
        assert!(
            err.starts_with("/h/.aws/config:1: `region` comes before any [section]"),
            "{err}"
        );
        let err = error("[default]\n = x\n");
        assert!(err.contains(":2: "), "{err}");
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn the_profile_comes_from_both_files_and_credentials_win() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        fs_err::create_dir(&aws).unwrap();
        fs_err::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\
             [team]\naws_access_key_id = T\naws_secret_access_key = TS\naws_session_token = TT\n",
        )
        .unwrap();
        fs_err::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n[profile team]\nregion = us-west-2\n\
             aws_access_key_id = IGNORED\nendpoint_url = http://127.0.0.1:9000\n",
        )
        .unwrap();
        let default = load(&env_of(&[]), Some(home.path())).unwrap();
        assert_eq!(default.access_key_id.as_deref(), Some("D"));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert_eq!(default.endpoint_url, None);
        let team = load(&env_of(&[("AWS_PROFILE", "team")]), Some(home.path())).unwrap();
        assert_eq!(
            team,
            Profile {
                access_key_id: Some("T".into()),
                secret_access_key: Some("TS".into()),
                session_token: Some("TT".into()),
                region: Some("us-west-2".into()),
                endpoint_url: Some("http://127.0.0.1:9000".into()),
            }
        );
        let err = load(&env_of(&[("AWS_PROFILE", "nobody")]), Some(home.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("profile `nobody`"), "{err}");
        // Files named by the environment replace ~/.aws/.
        let other = home.path().join("other-credentials");
        fs_err::write(
            &other,
            "[default]\naws_access_key_id = O\naws_secret_access_key = OS\n",
        )
        .unwrap();
        let env = env_of(&[("AWS_SHARED_CREDENTIALS_FILE", other.to_str().unwrap())]);
        let moved = load(&env, Some(home.path())).unwrap();
        assert_eq!(moved.access_key_id.as_deref(), Some("O"));
        assert_eq!(moved.region.as_deref(), Some("eu-west-1"));
        // The environment wins, key by key.
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "E"), ("AWS_REGION", "ap-south-1")]);
        let builder = team.apply(AmazonS3Builder::new(), &env);
        let value = |key: &str| builder.get_config_value(&key.parse().unwrap());
        assert_eq!(value("aws_access_key_id"), None);
        assert_eq!(value("aws_session_token"), None);
        assert_eq!(value("aws_region"), None);
        assert_eq!(value("aws_endpoint"), Some("http://127.0.0.1:9000".into()));
        assert_eq!(value("aws_allow_http"), Some("true".into()));
        // Half a key pair is refused.
        fs_err::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\n",
        )
        .unwrap();
        let err = load(&env_of(&[]), Some(home.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`default` has aws_access_key_id but no aws_secret_access_key"),
            "{err}"
        );
        // No files at all: nothing, and no error.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            load(&env_of(&[]), Some(empty.path())).unwrap(),
            Profile::default()
        );
    }
}
