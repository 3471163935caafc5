//! Wasm OCI artifacts: building them, recognising them, and choosing which
//! of their layers a container runs.
//!
//! An artifact is an OCI image manifest whose layers are raw `.wasm` bytes
//! rather than tar archives. The config follows the CNCF TAG Runtime Wasm
//! artifact layout (`application/vnd.wasm.config.v0+json`: `architecture`
//! `wasm`, `os` `wasip1`/`wasip2`, `layerDigests`). Artifacts built here also
//! carry an image-config style `config.Entrypoint`, so that containerd's CRI
//! finds a command when the pod spec gives none; other tools' artifacts do
//! not, and their pods set `command`.
//!
//! Layer selection (the rule the shim applies, in order):
//! 1. the container annotation [`LAYER_ANNOTATION`], when set, must name a
//!    Wasm layer by title (`org.opencontainers.image.title`, compared by file
//!    name) or digest; otherwise the container fails;
//! 2. `process.args[0]`, compared the same way, when it names a Wasm layer;
//! 3. the only Wasm layer, when there is exactly one;
//! 4. otherwise the container fails, listing the layers it could run.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageManifest, ANNOTATION_TITLE};
use serde::{Deserialize, Serialize};

use crate::blob::{blob_descriptor, canonical_json, validate_platform, Blob, Blobs, BuildError};
use crate::document::DocumentError;
use crate::wasm::{classify, WasmKind};

/// Config media type of a Wasm OCI artifact (CNCF TAG Runtime).
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the CNCF Wasm artifact layout (and `wkg`, runwasi).
pub const MEDIA_TYPE_WASM: &str = "application/wasm";
/// Layer media type Spin publishes.
pub const MEDIA_TYPE_WASM_CONTENT: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Layer media type of the Bytecode Alliance component layout.
pub const MEDIA_TYPE_COMPONENT: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// Every layer media type the shim runs as Wasm.
pub const WASM_LAYER_MEDIA_TYPES: [&str; 3] = [
    MEDIA_TYPE_WASM,
    MEDIA_TYPE_WASM_CONTENT,
    MEDIA_TYPE_COMPONENT,
];

/// Container annotation that names the layer to run (title or digest).
pub const LAYER_ANNOTATION: &str = "wasmpod.io/wasm-layer";

/// Whether `media_type` is one of [`WASM_LAYER_MEDIA_TYPES`].
pub fn is_wasm_layer(media_type: &str) -> bool {
    WASM_LAYER_MEDIA_TYPES.contains(&media_type)
}

/// Problems with an artifact or with choosing its layer.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A manifest, index or config is not valid JSON of its kind.
    #[error("invalid {what}: {reason}")]
    Parse {
        /// Which document.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The image has no layer with a Wasm media type.
    #[error("no Wasm layer (layer media types: {})", if media_types.is_empty() { "none".to_owned() } else { media_types.join(", ") })]
    NoWasmLayers {
        /// Media types of the layers it has.
        media_types: Vec<String>,
    },
    /// The selector names no Wasm layer.
    #[error("{LAYER_ANNOTATION}={selector:?} names no Wasm layer of the image (layers: {})", available.join(", "))]
    NoMatch {
        /// What was asked for.
        selector: String,
        /// Titles or digests of the Wasm layers.
        available: Vec<String>,
    },
    /// Several Wasm layers and nothing says which one runs.
    #[error("the image has {} Wasm layers and neither the container's command nor the {LAYER_ANNOTATION} annotation names one; set the command to one of: {}", available.len(), available.join(", "))]
    Ambiguous {
        /// Titles or digests of the Wasm layers.
        available: Vec<String>,
    },
    /// A manifest or index is malformed, or an index lists no Wasm
    /// manifest.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// An input to [`artifact_blobs`] is unusable.
    #[error("artifact module {title:?}: {reason}")]
    BadModule {
        /// The module's title.
        title: String,
        /// Why.
        reason: String,
    },
    /// Building the layout documents failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The config document of a Wasm artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// Creation time (RFC 3339); omitted by wasmpod for reproducibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip1` (modules) or `wasip2` (components).
    pub os: String,
    /// Digests of the Wasm layers, in manifest order.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// Component metadata (imports, exports, target world), kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<serde_json::Value>,
    /// Image-config style process defaults (a wasmpod extension that
    /// containerd's CRI reads like an image config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ProcessDefaults>,
    /// An image-config `rootfs` with no diff ids (an artifact has no tar
    /// layers), so readers of image configs accept the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<serde_json::Value>,
}

/// `config.Entrypoint` and `config.Env`, named as in an image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDefaults {
    /// Entrypoint: `/<title>` of the layer to run.
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Environment, `KEY=VALUE`.
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

/// One module or component of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactModule {
    /// Layer title (`org.opencontainers.image.title`), e.g. `app.wasm`.
    pub title: String,
    /// The Wasm bytes.
    pub data: Vec<u8>,
    /// Layer media type, one of [`WASM_LAYER_MEDIA_TYPES`].
    pub media_type: String,
}

/// What to put in a Wasm artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// The modules, one layer each; the first is the entry point.
    pub modules: Vec<ArtifactModule>,
    /// `wasip1` or `wasip2` (default: from the first module's kind).
    pub os: Option<String>,
    /// Environment baked into the config (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Annotations of the manifest.
    pub annotations: BTreeMap<String, String>,
}

/// Builds the blobs of a Wasm artifact: one layer per module, the
/// `application/vnd.wasm.config.v0+json` config and the manifest.
/// Reproducible: no timestamps; the same input gives the same digests.
///
/// # Errors
///
/// A module that is not Wasm, a duplicate or unusable title, an unknown
/// layer media type, or an invalid platform.
pub fn artifact_blobs(spec: &ArtifactSpec) -> Result<Blobs, ArtifactError> {
    let Some(first) = spec.modules.first() else {
        return Err(ArtifactError::BadModule {
            title: String::new(),
            reason: "an artifact needs at least one module".into(),
        });
    };
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    let mut titles = std::collections::BTreeSet::new();
    for m in &spec.modules {
        let bad = |reason: String| ArtifactError::BadModule {
            title: m.title.clone(),
            reason,
        };
        if m.title.is_empty() || m.title.contains('/') || m.title.contains('\0') {
            return Err(bad("the title must be a plain file name".into()));
        }
        if !titles.insert(m.title.as_str()) {
            return Err(bad("two modules have this title".into()));
        }
        if !is_wasm_layer(&m.media_type) {
            return Err(bad(format!(
                "layer media type {:?} is not one of {}",
                m.media_type,
                WASM_LAYER_MEDIA_TYPES.join(", ")
            )));
        }
        if classify(&m.data).is_none() {
            return Err(bad("not a WebAssembly module or component".into()));
        }
        let blob = Blob::new(m.media_type.clone(), m.data.clone());
        descriptors.push(blob_descriptor(&blob, Some(&m.title))?);
        layers.push(blob);
    }
    let os = spec.os.clone().unwrap_or_else(|| {
        match classify(&first.data) {
            Some(WasmKind::Component) => "wasip2",
            _ => "wasip1",
        }
        .to_owned()
    });
    validate_platform(&os, "wasm")?;
    let config = WasmConfig {
        created: None,
        author: None,
        architecture: "wasm".into(),
        os: os.clone(),
        layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
        component: None,
        config: Some(ProcessDefaults {
            entrypoint: vec![format!("/{}", first.title)],
            env: spec.env.clone(),
        }),
        rootfs: Some(serde_json::json!({"type": "layers", "diff_ids": []})),
    };
    let config = Blob::new(WASM_CONFIG_MEDIA_TYPE, canonical_json("config", &config)?);
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_spec::image::MediaType::ImageManifest.to_string(),
        "artifactType": WASM_CONFIG_MEDIA_TYPE,
        "config": blob_descriptor(&config, None)?,
        "layers": descriptors,
    });
    if !spec.annotations.is_empty() {
        manifest["annotations"] =
            serde_json::to_value(&spec.annotations).map_err(|e| ArtifactError::Parse {
                what: "annotations",
                reason: e.to_string(),
            })?;
    }
    let manifest = Blob::new(
        oci_spec::image::MediaType::ImageManifest.to_string(),
        canonical_json("manifest", &manifest)?,
    );
    Ok(Blobs {
        manifest,
        config,
        layers,
        platform: (os, "wasm".into()),
    })
}

/// The Wasm layers of a manifest, in order.
pub fn wasm_layers(manifest: &ImageManifest) -> Vec<&Descriptor> {
    manifest
        .layers()
        .iter()
        .filter(|d| is_wasm_layer(d.media_type().as_ref()))
        .collect()
}

/// Whether the manifest is a Wasm artifact (Wasm config media type or any
/// Wasm layer).
pub fn is_artifact(manifest: &ImageManifest) -> bool {
    manifest.config().media_type().to_string() == WASM_CONFIG_MEDIA_TYPE
        || !wasm_layers(manifest).is_empty()
}

/// A layer's title annotation.
pub fn title(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TITLE))
        .map(String::as_str)
}

/// How a layer is named in messages: its title, else its digest.
pub fn layer_name(d: &Descriptor) -> String {
    title(d).map_or_else(|| d.digest().to_string(), str::to_owned)
}

fn names(d: &Descriptor, selector: &str) -> bool {
    if d.digest().to_string() == selector {
        return true;
    }
    let file = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let wanted = file(selector);
    !wanted.is_empty() && title(d).is_some_and(|t| file(t) == wanted)
}

/// Chooses the layer to run by the rule in the module docs.
///
/// # Errors
///
/// No Wasm layer, an annotation naming none, or several layers and no way
/// to choose.
pub fn select_layer<'a>(
    manifest: &'a ImageManifest,
    annotation: Option<&str>,
    arg0: Option<&str>,
) -> Result<&'a Descriptor, ArtifactError> {
    let layers = wasm_layers(manifest);
    if layers.is_empty() {
        return Err(ArtifactError::NoWasmLayers {
            media_types: manifest
                .layers()
                .iter()
                .map(|d| d.media_type().to_string())
                .collect(),
        });
    }
    let available = || layers.iter().map(|d| layer_name(d)).collect();
    if let Some(selector) = annotation {
        return layers
            .iter()
            .copied()
            .find(|d| names(d, selector))
            .ok_or_else(|| ArtifactError::NoMatch {
                selector: selector.to_owned(),
                available: available(),
            });
    }
    if let Some(d) = arg0.and_then(|a| layers.iter().copied().find(|d| names(d, a))) {
        return Ok(d);
    }
    match layers.as_slice() {
        [only] => Ok(only),
        _ => Err(ArtifactError::Ambiguous {
            available: available(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{choose_manifest, parse_document, Document};

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    fn spec(media_type: &str) -> ArtifactSpec {
        ArtifactSpec {
            modules: vec![
                ArtifactModule {
                    title: "app.wasm".into(),
                    data: MODULE.to_vec(),
                    media_type: media_type.into(),
                },
                ArtifactModule {
                    title: "tool.wasm".into(),
                    data: COMPONENT.to_vec(),
                    media_type: media_type.into(),
                },
            ],
            os: None,
            env: vec!["A=1".into()],
            annotations: BTreeMap::new(),
        }
    }

    fn manifest_of(blobs: &Blobs) -> ImageManifest {
        match parse_document(&blobs.manifest.data).expect("parse") {
            Document::Manifest(m) => *m,
            Document::Index(_) => panic!("an index"),
        }
    }

    #[test]
    fn builds_a_reproducible_artifact_for_every_media_type() {
        for media_type in WASM_LAYER_MEDIA_TYPES {
            let a = artifact_blobs(&spec(media_type)).expect("build");
            let b = artifact_blobs(&spec(media_type)).expect("build");
            assert_eq!(a, b, "{media_type}");
            let m = manifest_of(&a);
            assert_eq!(m.config().media_type().to_string(), WASM_CONFIG_MEDIA_TYPE);
            assert_eq!(
                m.artifact_type().as_ref().map(|t| t.to_string()).as_deref(),
                Some(WASM_CONFIG_MEDIA_TYPE)
            );
            assert_eq!(m.layers().len(), 2);
            assert!(m
                .layers()
                .iter()
                .all(|l| l.media_type().to_string() == media_type));
            assert_eq!(m.layers()[0].digest().to_string(), a.layers[0].digest);
            assert_eq!(m.layers()[0].size(), MODULE.len() as u64);
            assert_eq!(title(&m.layers()[1]), Some("tool.wasm"));
            assert!(is_artifact(&m));
            let config: WasmConfig = serde_json::from_slice(&a.config.data).expect("config");
            assert_eq!(config.os, "wasip1");
            assert_eq!(config.architecture, "wasm");
            assert_eq!(
                config.layer_digests,
                vec![a.layers[0].digest.clone(), a.layers[1].digest.clone()]
            );
            let defaults = config.config.expect("entrypoint");
            assert_eq!(defaults.entrypoint, ["/app.wasm"]);
            assert_eq!(defaults.env, ["A=1"]);
            // What containerd's CRI sees when it reads the config as an image config.
            let as_image: oci_spec::image::ImageConfiguration =
                serde_json::from_slice(&a.config.data).expect("image config view");
            assert_eq!(
                as_image
                    .config()
                    .as_ref()
                    .and_then(|c| c.entrypoint().clone()),
                Some(vec!["/app.wasm".to_owned()])
            );
        }
        // Different media types give different manifests.
        let a = artifact_blobs(&spec(MEDIA_TYPE_WASM)).expect("build");
        let b = artifact_blobs(&spec(MEDIA_TYPE_COMPONENT)).expect("build");
        assert_ne!(a.manifest.digest, b.manifest.digest);
        assert_eq!(a.config.digest, b.config.digest);
    }

    #[test]
    fn component_first_means_wasip2() {
        let mut s = spec(MEDIA_TYPE_WASM);
        s.modules.reverse();
        let a = artifact_blobs(&s).expect("build");
        assert_eq!(a.platform, ("wasip2".to_owned(), "wasm".to_owned()));
    }

    #[test]
    fn rejects_bad_modules() {
        let mut s = spec("application/octet-stream");
        assert!(matches!(
            artifact_blobs(&s),
            Err(ArtifactError::BadModule { .. })
        ));
        s = spec(MEDIA_TYPE_WASM);
        s.modules[1].title = "app.wasm".into();
        assert!(artifact_blobs(&s)
            .unwrap_err()
            .to_string()
            .contains("two modules"));
        s = spec(MEDIA_TYPE_WASM);
        s.modules[0].data = b"#!/bin/sh\n".to_vec();
        assert!(artifact_blobs(&s)
            .unwrap_err()
            .to_string()
            .contains("not a WebAssembly"));
        s = spec(MEDIA_TYPE_WASM);
        s.modules[0].title = "../x.wasm".into();
        assert!(artifact_blobs(&s).is_err());
        s.modules.clear();
        assert!(artifact_blobs(&s).is_err());
    }

    #[test]
    fn selects_layers_by_the_documented_rule() {
        let a = artifact_blobs(&spec(MEDIA_TYPE_WASM)).expect("build");
        let m = manifest_of(&a);
        let pick = |ann, arg0| select_layer(&m, ann, arg0).map(layer_name);
        assert_eq!(pick(None, Some("/app.wasm")).unwrap(), "app.wasm");
        assert_eq!(pick(None, Some("tool.wasm")).unwrap(), "tool.wasm");
        assert_eq!(pick(None, Some("/bin/tool.wasm")).unwrap(), "tool.wasm");
        assert_eq!(pick(None, Some(&a.layers[1].digest)).unwrap(), "tool.wasm");
        // The annotation wins over args[0].
        assert_eq!(
            pick(Some("tool.wasm"), Some("/app.wasm")).unwrap(),
            "tool.wasm"
        );
        let err = pick(Some("nope.wasm"), Some("/app.wasm")).unwrap_err();
        assert!(matches!(err, ArtifactError::NoMatch { .. }), "{err}");
        assert!(err.to_string().contains("app.wasm, tool.wasm"), "{err}");
        // Nothing names a layer, and there are two.
        let err = pick(None, Some("/")).unwrap_err();
        assert!(matches!(err, ArtifactError::Ambiguous { .. }), "{err}");
        assert!(pick(None, None).is_err());

        let mut one = spec(MEDIA_TYPE_WASM_CONTENT);
        one.modules.truncate(1);
        let a = artifact_blobs(&one).expect("build");
        let m = manifest_of(&a);
        assert_eq!(
            layer_name(select_layer(&m, None, Some("/")).unwrap()),
            "app.wasm"
        );
        assert_eq!(
            layer_name(select_layer(&m, None, None).unwrap()),
            "app.wasm"
        );
    }

    #[test]
    fn third_party_manifests() {
        // Layout runwasi / wkg publish: no titles, CNCF config, application/wasm layer.
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},
            "layers":[{"mediaType":"application/wasm","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":8}]}"#;
        let Document::Manifest(m) = parse_document(m).expect("parse") else {
            panic!("not a manifest")
        };
        assert!(is_artifact(&m));
        let d = select_layer(&m, None, Some("/")).expect("one layer");
        assert_eq!(layer_name(d), format!("sha256:{}", "1".repeat(64)));

        // A classic image: tar layers only.
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":8}]}"#;
        let Document::Manifest(m) = parse_document(m).expect("parse") else {
            panic!("not a manifest")
        };
        assert!(!is_artifact(&m));
        let err = select_layer(&m, None, None).unwrap_err();
        assert!(err.to_string().contains("tar+gzip"), "{err}");

        // An index with a Wasm platform among others.
        let i = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":1,"platform":{"os":"wasip1","architecture":"wasm"}}]}"#;
        let Document::Index(i) = parse_document(i).expect("parse") else {
            panic!("not an index")
        };
        assert_eq!(
            choose_manifest(&i).unwrap().digest().to_string(),
            format!("sha256:{}", "3".repeat(64))
        );

        assert!(parse_document(b"{not json").is_err());
        assert!(parse_document(br#"{"schemaVersion":2,"layers":"x"}"#).is_err());
    }
}
