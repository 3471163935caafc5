//! `wasmpod oci inspect`: what a node would run from a layout or a registry
//! image.

use std::path::Path;

use anyhow::{bail, Context, Result};
use oci_spec::image::ImageManifest;
use serde::Serialize;
use wasmpod_oci::artifact::{is_artifact, layer_name, select_layer, title};
use wasmpod_oci::document::{choose_manifest, parse_document, Document};
use wasmpod_oci::layout::read_layout_tar;

use crate::push::run_bounded;
use crate::registry::Remote;
use crate::Inspect;

/// One layer in `inspect`'s output.
#[derive(Debug, Serialize)]
pub(crate) struct LayerSummary {
    pub(crate) media_type: String,
    pub(crate) size: u64,
    pub(crate) digest: String,
    pub(crate) title: Option<String>,
}

/// What `inspect` prints.
#[derive(Debug, Serialize)]
pub(crate) struct ImageSummary {
    pub(crate) reference: Option<String>,
    pub(crate) manifest_digest: String,
    pub(crate) kind: &'static str,
    pub(crate) platform: String,
    pub(crate) config_media_type: String,
    pub(crate) entrypoint: Vec<String>,
    pub(crate) layers: Vec<LayerSummary>,
    /// For an artifact: the title (or digest) of the layer a container
    /// without a layer annotation runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) default_layer: Option<String>,
    /// For an artifact whose default layer cannot be chosen: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) default_layer_error: Option<String>,
}

/// Summarises a manifest (its bytes and digest) and its config.
pub(crate) fn summarise(
    reference: Option<String>,
    manifest_digest: String,
    manifest: &[u8],
    config: &[u8],
    platform: Option<(String, String)>,
) -> Result<ImageSummary> {
    let Document::Manifest(manifest) = parse_document(manifest)? else {
        bail!("{manifest_digest} is an image index, not a manifest");
    };
    let manifest: &ImageManifest = &manifest;
    let config_json: serde_json::Value =
        serde_json::from_slice(config).context("the config is not JSON")?;
    let entrypoint: Vec<String> = config_json
        .pointer("/config/Entrypoint")
        .and_then(|e| e.as_array())
        .map(|e| {
            e.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let (os, arch) = platform.unwrap_or_else(|| {
        let field = |k: &str| {
            config_json
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned()
        };
        (field("os"), field("architecture"))
    });
    let artifact = is_artifact(manifest);
    let (default_layer, default_layer_error) = if artifact {
        match select_layer(manifest, None, entrypoint.first().map(String::as_str)) {
            Ok(d) => (Some(layer_name(d)), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    Ok(ImageSummary {
        reference,
        manifest_digest,
        kind: if artifact {
            "Wasm artifact"
        } else {
            "classic image"
        },
        platform: format!("{os}/{arch}"),
        config_media_type: manifest.config().media_type().to_string(),
        entrypoint,
        layers: manifest
            .layers()
            .iter()
            .map(|d| LayerSummary {
                media_type: d.media_type().to_string(),
                size: d.size(),
                digest: d.digest().to_string(),
                title: title(d).map(str::to_owned),
            })
            .collect(),
        default_layer,
        default_layer_error,
    })
}

/// The human-readable form of `inspect`'s output.
pub(crate) fn render(s: &ImageSummary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<12}{v}\n"));
    line("reference", s.reference.as_deref().unwrap_or("(none)"));
    line("manifest", &s.manifest_digest);
    line("kind", s.kind);
    line("platform", &s.platform);
    line("config", &s.config_media_type);
    let entrypoint = if s.entrypoint.is_empty() {
        "(none)".to_owned()
    } else {
        s.entrypoint.join(" ")
    };
    line("entrypoint", &entrypoint);
    line("layers", &s.layers.len().to_string());
    for l in &s.layers {
        out.push_str(&format!(
            "  {}  {} bytes  {}{}\n",
            l.media_type,
            l.size,
            l.digest,
            l.title
                .as_deref()
                .map(|t| format!("  {t}"))
                .unwrap_or_default()
        ));
    }
    match (&s.default_layer, &s.default_layer_error) {
        (Some(layer), _) => out.push_str(&format!("{:<12}{layer}\n", "runs")),
        (None, Some(error)) => {
            out.push_str(&format!("{:<12}nothing by default: {error}\n", "runs"))
        }
        (None, None) => {}
    }
    out
}

/// `wasmpod oci inspect`.
pub(crate) fn inspect(i: &Inspect) -> Result<()> {
    let local = Path::new(&i.source);
    let summary = if local.exists() || i.source.ends_with(".tar") {
        inspect_layout(local).with_context(|| format!("inspect {}", local.display()))?
    } else {
        inspect_remote(i).with_context(|| format!("inspect {}", i.source))?
    };
    if i.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}

pub(crate) fn inspect_layout(path: &Path) -> Result<ImageSummary> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let image = read_layout_tar(std::io::BufReader::new(file))?;
    let blobs = image.blobs;
    summarise(
        image.reference,
        blobs.manifest.digest,
        &blobs.manifest.data,
        &blobs.config.data,
        Some(blobs.platform),
    )
}

pub(crate) fn inspect_remote(i: &Inspect) -> Result<ImageSummary> {
    let remote = Remote::new(
        &i.source,
        i.remote.plain_http,
        i.remote.docker_config.as_deref(),
    )?;
    let what = format!("inspect at {}", remote.reference.resolve_registry());
    run_bounded(&what, async {
        remote.login_pull().await?;
        let (mut bytes, mut digest) = remote.manifest(None).await?;
        let mut platform = None;
        if let Document::Index(index) = parse_document(&bytes)? {
            let chosen = choose_manifest(&index)?;
            platform = chosen
                .platform()
                .as_ref()
                .map(|p| (p.os().to_string(), p.architecture().to_string()));
            (bytes, digest) = remote.manifest(Some(chosen.digest().as_ref())).await?;
        }
        let Document::Manifest(manifest) = parse_document(&bytes)? else {
            bail!("the index names another index ({digest})");
        };
        let config = manifest.config();
        let config = remote
            .small_blob(config.digest().as_ref(), config.size())
            .await?;
        summarise(Some(i.source.clone()), digest, &bytes, &config, platform)
    })
}
