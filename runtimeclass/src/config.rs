//! Registering the `wasmpod` handler in a containerd config, and removing it
//! again, without disturbing anything else in the file.
//!
//! The handler is added as one block of text at the end of the file, between
//! two marker comments, so that the file's own bytes (comments, order,
//! quoting) are untouched and the diff is exactly the handler. Before and
//! after editing, the file is parsed with `toml_edit`: a file that does not
//! parse is refused, the config version decides the plugin path (1: `cri`,
//! 2: `io.containerd.grpc.v1.cri`, 3: `io.containerd.cri.v1.runtime`), the
//! runc runtime's `SystemdCgroup` is copied so the cgroup drivers match, and
//! the result must parse to the original document plus the handler.
//!
//! Removal deletes the marked block; when nothing else changed the file it
//! is the original byte for byte.

use toml_edit::{DocumentMut, Item};

use crate::{DEFAULT_SHIM_PATH, HANDLER, RUNC_RUNTIME_TYPE, RUNTIME_TYPE};

/// First line of the block the installer manages.
pub const BEGIN_MARKER: &str =
    "# --- wasmpod: begin (added by wasmpod-node; `wasmpod-node uninstall` removes it) ---";
/// Last line of that block.
pub const END_MARKER: &str = "# --- wasmpod: end ---";

/// The annotations containerd passes from pods and containers to the shim.
const ANNOTATIONS: &str = r#"["wasmpod.io/*"]"#;

/// Why a config cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML.
    #[error("not valid TOML, refusing to edit it: {0}")]
    Parse(String),
    /// `version` is not one wasmpod knows.
    #[error("config version {0} is not supported (1, 2 or 3)")]
    Version(i64),
    /// A config without `version` (version 1, `plugins.cri`) on a node whose
    /// containerd is 2.x: containerd 2.x ignores that CRI section (runc's
    /// settings with it), so a handler written there would never be seen.
    #[error("the config has no `version` (version 1, `[plugins.cri]`), which containerd 2.x does not read: its CRI section, runc's settings included, is ignored; migrate it to `version = 3` first (`containerd config migrate` keeps only what 2.x reads, so check the CRI settings by hand)")]
    Version1OnContainerd2,
    /// A `wasmpod` runtime exists that the installer did not add.
    #[error("a `{HANDLER}` runtime is already configured outside wasmpod-node's block; remove it or leave it as is")]
    Foreign,
    /// Only one of the two markers is present.
    #[error("the wasmpod block's markers are damaged (begin without end or the reverse); fix the file by hand")]
    Markers,
    /// Internal check: the edit did not produce the expected document.
    #[error("the edited config does not parse to the original plus the handler: {0}")]
    Verify(String),
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The new file contents.
    pub text: String,
    /// Whether they differ from the input.
    pub changed: bool,
    /// The config version used.
    pub version: i64,
    /// `SystemdCgroup` given to the handler.
    pub systemd_cgroup: bool,
}

/// The config version of a parsed document (no `version` key: 1).
pub fn version_of(doc: &DocumentMut) -> Result<i64, ConfigError> {
    match doc.get("version") {
        None => Ok(1),
        Some(v) => match v.as_integer() {
            Some(n @ 1..=3) => Ok(n),
            Some(n) => Err(ConfigError::Version(n)),
            None => Err(ConfigError::Parse("`version` is not an integer".into())),
        },
    }
}

/// The CRI plugin's runtimes table path for a config version.
pub fn runtimes_path(version: i64) -> Result<Vec<&'static str>, ConfigError> {
    match version {
        1 => Ok(vec!["plugins", "cri", "containerd", "runtimes"]),
        2 | 3 => Ok(crate::cri_runtimes_path(version)
            .map(|p| p.to_vec())
            .unwrap_or_default()),
        n => Err(ConfigError::Version(n)),
    }
}

fn get<'a>(doc: &'a DocumentMut, path: &[&str]) -> Option<&'a Item> {
    let mut item = doc.as_item();
    for key in path {
        item = item.get(key)?;
    }
    Some(item)
}

/// The runc runtime's `options.SystemdCgroup` (false when unset).
pub fn runc_systemd_cgroup(doc: &DocumentMut, version: i64) -> bool {
    let Ok(mut path) = runtimes_path(version) else {
        return false;
    };
    path.extend(["runc", "options", "SystemdCgroup"]);
    get(doc, &path).and_then(Item::as_bool).unwrap_or(false)
}

fn parse(text: &str) -> Result<DocumentMut, ConfigError> {
    text.parse::<DocumentMut>()
        .map_err(|e| ConfigError::Parse(e.to_string()))
}

/// Quotes a key for a TOML table header the way the file's version does.
fn header(path: &[&str], version: i64) -> String {
    path.iter()
        .map(|k| {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*k).to_owned()
            } else if version >= 3 {
                format!("'{k}'")
            } else {
                format!("\"{k}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The file beside containerd's config that holds the handler's options
/// for containerd 1.6 (see [`block_with`]).
pub const OPTIONS_FILE: &str = "wasmpod-runtime.toml";

/// The block registering the handler for `version`.
pub fn block(version: i64, systemd_cgroup: bool) -> Result<String, ConfigError> {
    block_with(version, systemd_cgroup, None, None)
}

/// The runtime type the handler is registered with for `version`.
pub fn runtime_type(version: i64) -> &'static str {
    if version >= 3 {
        RUNC_RUNTIME_TYPE
    } else {
        RUNTIME_TYPE
    }
}

/// The block registering the handler for `version`, its options naming
/// `options_file` as `ConfigPath` on config versions 1 and 2: containerd
/// 1.6 gives a non-runc runtime only a `ConfigPath`, never the table's
/// other keys, so the shim learns the cgroup driver from that file (1.7
/// then sends the path too; containerd 2.x, version 3, sends the table).
/// On version 3 the handler has runc's runtime type and `runtime_path`
/// `shim` (default [`DEFAULT_SHIM_PATH`]), so CRI runs its pods with user
/// namespaces (see [`RUNC_RUNTIME_TYPE`]).
pub fn block_with(
    version: i64,
    systemd_cgroup: bool,
    options_file: Option<&str>,
    shim: Option<&str>,
) -> Result<String, ConfigError> {
    let mut path = runtimes_path(version)?;
    path.push(HANDLER);
    let table = header(&path, version);
    let quote = |s: &str| toml_edit::Value::from(s).decorated("", "").to_string();
    let config_path = match options_file {
        Some(file) if version <= 2 => format!("  ConfigPath = {}\n", quote(file)),
        _ => String::new(),
    };
    let runtime_path = if version >= 3 {
        format!(
            "  runtime_path = {}\n",
            quote(shim.unwrap_or(DEFAULT_SHIM_PATH))
        )
    } else {
        String::new()
    };
    let runtime_type = runtime_type(version);
    Ok(format!(
        "{BEGIN_MARKER}\n\
         [{table}]\n  runtime_type = \"{runtime_type}\"\n{runtime_path}  \
         pod_annotations = {ANNOTATIONS}\n  container_annotations = {ANNOTATIONS}\n\
         [{table}.options]\n  SystemdCgroup = {systemd_cgroup}\n{config_path}\
         {END_MARKER}\n"
    ))
}

/// The contents of the [`OPTIONS_FILE`]: the handler's options as TOML.
pub fn options_file_text(systemd_cgroup: bool) -> String {
    format!(
        "# The wasmpod handler's runtime options, written by wasmpod-node (containerd's\n\
         # config names this file as the handler's ConfigPath).\n\
         SystemdCgroup = {systemd_cgroup}\n"
    )
}

/// Splits `text` around the managed block: (before, block, after).
fn split(text: &str) -> Result<Option<(&str, &str, &str)>, ConfigError> {
    let begin = text.find(BEGIN_MARKER);
    let end = text.find(END_MARKER);
    match (begin, end) {
        (None, None) => Ok(None),
        (Some(b), Some(e)) if e > b => {
            let mut stop = e + END_MARKER.len();
            if text[stop..].starts_with('\n') {
                stop += 1;
            }
            Ok(Some((&text[..b], &text[b..stop], &text[stop..])))
        }
        _ => Err(ConfigError::Markers),
    }
}

/// The config for an empty or missing file: the version line and nothing
/// else (the handler block follows).
pub fn minimal(version: i64) -> String {
    format!("version = {version}\n")
}

/// Registers the handler in `text` (a containerd `config.toml`). Idempotent:
/// a file that already has the same block is returned unchanged; one whose
/// block differs (e.g. the runc cgroup driver changed) gets it replaced.
///
/// `default_version` is the node's containerd's own version (3 for 2.x), used
/// when `text` is empty; a version 1 file on a 2.x node is refused.
///
/// # Errors
///
/// Unparseable TOML, an unknown version, a `wasmpod` runtime added by
/// someone else, damaged markers.
pub fn install(text: &str, default_version: i64) -> Result<Installed, ConfigError> {
    install_with(text, default_version, None, None)
}

/// [`install`], the options naming `options_file` (see [`block_with`]).
///
/// # Errors
///
/// As [`install`].
pub fn install_with(
    text: &str,
    default_version: i64,
    options_file: Option<&str>,
    shim: Option<&str>,
) -> Result<Installed, ConfigError> {
    let base = if text.trim().is_empty() {
        minimal(default_version)
    } else {
        text.to_owned()
    };
    let (outside, existing) = match split(&base)? {
        Some((before, block, after)) => (format!("{before}{after}"), Some(block.to_owned())),
        None => (base.clone(), None),
    };
    let doc = parse(&outside)?;
    let version = version_of(&doc)?;
    if version == 1 && default_version >= 3 {
        return Err(ConfigError::Version1OnContainerd2);
    }
    let mut handler_path = runtimes_path(version)?;
    handler_path.push(HANDLER);
    if get(&doc, &handler_path).is_some() {
        return Err(ConfigError::Foreign);
    }
    let systemd_cgroup = runc_systemd_cgroup(&doc, version);
    let new_block = block_with(version, systemd_cgroup, options_file, shim)?;
    if existing.as_deref() == Some(new_block.as_str()) {
        return Ok(Installed {
            text: text.to_owned(),
            changed: false,
            version,
            systemd_cgroup,
        });
    }
    let mut out = outside;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&new_block);
    verify(&doc, &out, &handler_path, version, systemd_cgroup)?;
    Ok(Installed {
        changed: out != text,
        text: out,
        version,
        systemd_cgroup,
    })
}

/// Checks that `out` parses to `original` plus exactly the handler table.
fn verify(
    original: &DocumentMut,
    out: &str,
    handler_path: &[&str],
    version: i64,
    systemd_cgroup: bool,
) -> Result<(), ConfigError> {
    let mut doc = parse(out).map_err(|e| ConfigError::Verify(e.to_string()))?;
    let handler =
        get(&doc, handler_path).ok_or_else(|| ConfigError::Verify("no handler table".into()))?;
    let runtime_type = handler.get("runtime_type").and_then(Item::as_str);
    let systemd = handler
        .get("options")
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(Item::as_bool);
    if runtime_type != Some(self::runtime_type(version)) || systemd != Some(systemd_cgroup) {
        return Err(ConfigError::Verify(format!(
            "handler has runtime_type {runtime_type:?}, SystemdCgroup {systemd:?}"
        )));
    }
    // Remove the handler (and tables that only exist to hold it) and compare.
    let (parent, last) = handler_path.split_at(handler_path.len() - 1);
    let mut item = doc.as_item_mut();
    for key in parent {
        item = item
            .get_mut(key)
            .ok_or_else(|| ConfigError::Verify("parent table vanished".into()))?;
    }
    if let Some(t) = item.as_table_like_mut() {
        t.remove(last[0]);
    }
    prune_empty(doc.as_item_mut());
    let mut want = original.clone();
    prune_empty(want.as_item_mut());
    if doc.to_string() != want.to_string() && values(&doc) != values(&want) {
        return Err(ConfigError::Verify(
            "other settings changed while adding the handler".into(),
        ));
    }
    Ok(())
}

/// Drops tables left empty (the implicit parents of the handler).
fn prune_empty(item: &mut Item) {
    if let Some(t) = item.as_table_like_mut() {
        let keys: Vec<String> = t.iter().map(|(k, _)| k.to_owned()).collect();
        for k in keys {
            if let Some(child) = t.get_mut(&k) {
                prune_empty(child);
                if child.as_table_like().is_some_and(|c| c.is_empty()) && child.is_table() {
                    t.remove(&k);
                }
            }
        }
    }
}

/// The document's values as JSON-like text, ignoring formatting.
fn values(doc: &DocumentMut) -> String {
    fn walk(item: &Item, out: &mut String) {
        if let Some(t) = item.as_table_like() {
            let mut keys: Vec<_> = t.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (k, v) in keys {
                out.push_str(k);
                out.push(':');
                walk(v, out);
                out.push(',');
            }
            out.push('}');
        } else if let Some(v) = item.as_value() {
            out.push_str(&v.clone().decorated("", "").to_string());
        } else if let Some(a) = item.as_array_of_tables() {
            out.push('[');
            for t in a.iter() {
                walk(&Item::Table(t.clone()), out);
            }
            out.push(']');
        }
    }
    let mut s = String::new();
    walk(doc.as_item(), &mut s);
    s
}

/// The first line of a k3s/rke2 template that keeps the generated config.
pub const TEMPLATE_BASE: &str = "{{ template \"base\" . }}\n";

/// Registers the handler in a k3s/rke2 `config.toml.tmpl` (Go template
/// text, so it is not parsed): the version and the runc cgroup driver come
/// from `generated`, the config k3s rendered (`default_version` and false
/// when there is none). A missing template becomes the base template plus
/// the handler.
///
/// # Errors
///
/// Damaged markers, an unknown version in the generated config.
pub fn install_template(
    template: &str,
    generated: &str,
    default_version: i64,
) -> Result<Installed, ConfigError> {
    install_template_with(template, generated, default_version, None, None)
}

/// [`install_template`], the options naming `options_file` (see
/// [`block_with`]).
///
/// # Errors
///
/// As [`install_template`].
pub fn install_template_with(
    template: &str,
    generated: &str,
    default_version: i64,
    options_file: Option<&str>,
    shim: Option<&str>,
) -> Result<Installed, ConfigError> {
    let (version, systemd_cgroup) = match generated.parse::<DocumentMut>() {
        Ok(doc) if !generated.trim().is_empty() => {
            let v = version_of(&doc)?;
            (v, runc_systemd_cgroup(&doc, v))
        }
        _ => (default_version, false),
    };
    let base = if template.trim().is_empty() {
        TEMPLATE_BASE.to_owned()
    } else {
        template.to_owned()
    };
    let new_block = block_with(version, systemd_cgroup, options_file, shim)?;
    let outside = match split(&base)? {
        Some((_, existing, _)) if existing == new_block => {
            return Ok(Installed {
                text: template.to_owned(),
                changed: false,
                version,
                systemd_cgroup,
            })
        }
        Some((before, _, after)) => format!("{before}{after}"),
        None => base,
    };
    let mut out = outside;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&new_block);
    Ok(Installed {
        changed: out != template,
        text: out,
        version,
        systemd_cgroup,
    })
}

/// Whether a template holds nothing but the base line (what uninstall
/// leaves of a template the installer created).
pub fn is_base_only(text: &str) -> bool {
    text.trim() == TEMPLATE_BASE.trim()
}

/// Removes the managed block. `Ok(None)` when there is none.
///
/// # Errors
///
/// Damaged markers.
pub fn uninstall(text: &str) -> Result<Option<String>, ConfigError> {
    let Some((before, _, after)) = split(text)? else {
        return Ok(None);
    };
    // install() separated the block by one blank line: take it back.
    let before = before
        .strip_suffix('\n')
        .filter(|b| b.ends_with('\n'))
        .unwrap_or(before);
    Ok(Some(format!("{before}{after}")))
}

/// Whether `text` has the handler registered by wasmpod-node.
pub fn is_installed(text: &str) -> bool {
    matches!(split(text), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/testdata/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The lines `after` has that `before` lacks, when `after` only appends.
    fn appended<'a>(before: &str, after: &'a str) -> &'a str {
        let trimmed = before.trim_end_matches('\n');
        assert!(after.starts_with(trimmed), "the original bytes changed");
        &after[trimmed.len()..]
    }

    #[test]
    fn a_version_1_config_is_refused_on_a_containerd_2_node() {
        let original = golden("legacy-v1.toml");
        let err = install(&original, 3).expect_err("v1 on a 2.x node");
        assert!(matches!(err, ConfigError::Version1OnContainerd2), "{err}");
        assert!(err.to_string().contains("version = 3"), "{err}");
        // versions 2 and 3 are read by 2.x and stay as they are
        for (name, version) in [("containerd-1.7.toml", 2), ("containerd-2.1.toml", 3)] {
            let done = install(&golden(name), 3).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(done.version, version, "{name}");
        }
    }

    #[test]
    fn golden_configs_round_trip_with_exactly_the_handler_added() {
        for (name, version, systemd) in [
            ("containerd-1.6.toml", 2, false),
            ("containerd-1.7.toml", 2, false),
            ("containerd-2.1.toml", 3, false),
            ("microk8s-containerd-template.toml", 2, false),
            ("custom-commented.toml", 2, true),
            ("containerd-1.6-systemd.toml", 2, true),
            ("legacy-v1.toml", 1, false),
        ] {
            let original = golden(name);
            let done = install(&original, 2).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(done.changed, "{name}");
            assert_eq!(
                (done.version, done.systemd_cgroup),
                (version, systemd),
                "{name}"
            );
            let added = appended(&original, &done.text);
            let expected = block(version, systemd).expect("block");
            assert_eq!(
                added.trim_start_matches('\n'),
                expected,
                "{name}: diff is not just the handler"
            );
            // Idempotent.
            let again = install(&done.text, 2).expect("again");
            assert!(!again.changed, "{name}: second install changed the file");
            assert_eq!(again.text, done.text);
            // Uninstall gives back the original, byte for byte.
            let removed = uninstall(&done.text)
                .expect("uninstall")
                .expect("block present");
            assert_eq!(removed, original, "{name}: uninstall is not byte-identical");
            assert!(uninstall(&removed).expect("uninstall").is_none());
            // The expected file is kept as a golden output too.
            let out = format!("{}.installed", name.trim_end_matches(".toml"));
            let path = format!("{}/testdata/golden/{out}", env!("CARGO_MANIFEST_DIR"));
            if std::env::var_os("WASMPOD_BLESS").is_some() {
                std::fs::write(&path, &done.text).expect("bless");
            }
            assert_eq!(
                done.text,
                golden(&out),
                "{name}: differs from {out} (WASMPOD_BLESS=1 rewrites)"
            );
        }
    }

    #[test]
    fn k3s_template_round_trips() {
        let template = golden("k3s-config.toml.tmpl");
        let generated = golden("containerd-1.7.toml");
        let done = install_template(&template, &generated, 2).expect("install");
        assert!(done.changed && done.version == 2);
        assert_eq!(
            appended(&template, &done.text).trim_start_matches('\n'),
            block(2, false).expect("block")
        );
        assert!(
            !install_template(&done.text, &generated, 2)
                .expect("again")
                .changed
        );
        assert_eq!(
            uninstall(&done.text).expect("uninstall").expect("present"),
            template
        );
        // containerd 2 inside k3s: version 3 from the generated config.
        let v3 = install_template("", &golden("containerd-2.1.toml"), 2).expect("v3");
        assert_eq!(v3.version, 3);
        assert!(v3.text.starts_with(TEMPLATE_BASE));
        let removed = uninstall(&v3.text).expect("uninstall").expect("present");
        assert!(is_base_only(&removed), "{removed:?}");
    }

    #[test]
    fn the_v3_header_uses_the_file_s_quoting() {
        let b = block(3, true).expect("block");
        assert!(
            b.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmpod]"),
            "{b}"
        );
        assert!(b.contains("SystemdCgroup = true"));
        let b = block(1, false).expect("block");
        assert!(
            b.contains("[plugins.cri.containerd.runtimes.wasmpod]"),
            "{b}"
        );
    }

    #[test]
    fn empty_and_missing_configs_get_a_minimal_one() {
        for (text, version) in [("", 2), ("\n\n", 3)] {
            let done = install(text, version).expect("install");
            assert!(
                done.text
                    .starts_with(&format!("version = {version}\n\n{BEGIN_MARKER}")),
                "{}",
                done.text
            );
            let doc: DocumentMut = done.text.parse().expect("parses");
            assert_eq!(version_of(&doc).expect("version"), version);
        }
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let err = install("version = 2\n[plugins\n", 2).unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err}");
        let err = install("version = 7\n", 2).unwrap_err();
        assert!(matches!(err, ConfigError::Version(7)), "{err}");
        let foreign = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmpod]\n  runtime_type = \"x\"\n";
        assert!(matches!(
            install(foreign, 2).unwrap_err(),
            ConfigError::Foreign
        ));
        let damaged = format!("version = 2\n{BEGIN_MARKER}\n");
        assert!(matches!(
            install(&damaged, 2).unwrap_err(),
            ConfigError::Markers
        ));
        assert!(uninstall(&damaged).is_err());
    }

    #[test]
    fn a_changed_cgroup_driver_replaces_the_block_and_keeps_other_edits() {
        let original = golden("containerd-1.7.toml");
        let done = install(&original, 2).expect("install");
        // Someone switches runc to systemd cgroups and adds a setting after us.
        let edited = done
            .text
            .replacen("SystemdCgroup = false", "SystemdCgroup = true", 1)
            + "\n[proxy_plugins.example]\n  type = \"snapshot\"\n  address = \"/run/x.sock\"\n";
        let again = install(&edited, 2).expect("reinstall");
        assert!(again.changed && again.systemd_cgroup);
        assert!(again.text.contains("address = \"/run/x.sock\""));
        let removed = uninstall(&again.text).expect("uninstall").expect("present");
        assert!(!is_installed(&removed));
        assert!(removed.contains("address = \"/run/x.sock\"") && !removed.contains(RUNTIME_TYPE));
    }
}
