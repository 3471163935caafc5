//! OCI image layouts as tar streams: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`, written from the blobs of an image or artifact and
//! read back (for `wasmpod oci push` and `inspect`), each blob checked
//! against its digest.

use std::collections::BTreeMap;
use std::io::{self, Write};

use oci_spec::image::{
    Arch, Descriptor, ImageIndexBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder,
    ANNOTATION_REF_NAME,
};
use tar::EntryType;

use crate::archive::{append_dir, append_file, IMPLICIT_DIR_MODE};
use crate::blob::{
    blob_descriptor, canonical_json, hex_part, spec_error, validate_platform, Blob, Blobs,
    BuildError,
};
use crate::document::{choose_manifest, parse_document, Document};
use crate::reference::validate_reference;

/// Annotation containerd reads to name an image imported from an archive.
const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// Version written to the `oci-layout` file.
const IMAGE_LAYOUT_VERSION: &str = "1.0.0";

/// Digests and size of an image written by [`write_image_tar`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Digest of the image manifest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// Digest of the image config, `sha256:<hex>`.
    pub config_digest: String,
    /// Digests of the layers, in order, `sha256:<hex>`. As the layers are
    /// uncompressed these are also the config's `rootfs.diff_ids`.
    pub layer_digests: Vec<String>,
    /// Number of bytes of the tar stream written.
    pub size: u64,
}

/// Writes `blobs` as an OCI image layout tar stream whose `index.json` names
/// the manifest as `reference` (both `org.opencontainers.image.ref.name` and
/// containerd's `io.containerd.image.name`), with its platform.
///
/// # Errors
///
/// Returns a [`BuildError`] if the reference or platform is invalid, or if
/// writing to `out` fails.
pub fn write_layout_tar<W: Write>(
    blobs: &Blobs,
    reference: &str,
    out: W,
) -> Result<Built, BuildError> {
    validate_reference(reference)?;
    let (os, architecture) = &blobs.platform;
    validate_platform(os, architecture)?;
    let platform = PlatformBuilder::default()
        .os(Os::from(os.as_str()))
        .architecture(Arch::from(architecture.as_str()))
        .build()
        .map_err(spec_error("platform"))?;
    let mut manifest_descriptor = blob_descriptor(&blobs.manifest, None)?;
    manifest_descriptor.set_platform(Some(platform));
    manifest_descriptor.set_annotations(Some(
        [
            (ANNOTATION_REF_NAME.to_owned(), reference.to_owned()),
            (
                ANNOTATION_CONTAINERD_IMAGE_NAME.to_owned(),
                reference.to_owned(),
            ),
        ]
        .into_iter()
        .collect(),
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2_u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()
        .map_err(spec_error("index"))?;
    let index = canonical_json("index", &index)?;

    let oci_layout = OciLayoutBuilder::default()
        .image_layout_version(IMAGE_LAYOUT_VERSION)
        .build()
        .map_err(spec_error("oci-layout"))?;
    let oci_layout = canonical_json("oci-layout", &oci_layout)?;

    // Sorted by digest hex; a BTreeMap also drops duplicate blobs.
    let all: BTreeMap<&str, &[u8]> = blobs
        .layers
        .iter()
        .chain([&blobs.config, &blobs.manifest])
        .map(|b| (hex_part(&b.digest), b.data.as_slice()))
        .collect();

    let mut archive = tar::Builder::new(CountingWriter {
        inner: out,
        count: 0,
    });
    let outer = "image layout";
    append_dir(&mut archive, outer, "blobs/", IMPLICIT_DIR_MODE)?;
    append_dir(&mut archive, outer, "blobs/sha256/", IMPLICIT_DIR_MODE)?;
    for (hex, data) in all {
        append_file(
            &mut archive,
            outer,
            &format!("blobs/sha256/{hex}"),
            data,
            0o644,
        )?;
    }
    append_file(&mut archive, outer, "index.json", &index, 0o644)?;
    append_file(&mut archive, outer, "oci-layout", &oci_layout, 0o644)?;
    let mut counted = archive.into_inner().map_err(|source| BuildError::Tar {
        archive: outer,
        path: "<end of archive>".to_owned(),
        source,
    })?;
    counted.flush().map_err(|source| BuildError::Tar {
        archive: outer,
        path: "<end of archive>".to_owned(),
        source,
    })?;

    Ok(Built {
        manifest_digest: blobs.manifest.digest.clone(),
        config_digest: blobs.config.digest.clone(),
        layer_digests: blobs.layers.iter().map(|l| l.digest.clone()).collect(),
        size: counted.count,
    })
}

/// Why an image layout could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The tar stream could not be read.
    #[error("read the image layout: {0}")]
    Io(#[from] io::Error),
    /// The layout is incomplete or inconsistent.
    #[error("image layout: {0}")]
    Invalid(String),
}

/// An image read back from an image-layout tar by [`read_layout_tar`].
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The name `index.json` gives it (`io.containerd.image.name`, else
    /// `org.opencontainers.image.ref.name`).
    pub reference: Option<String>,
    /// Its manifest, config and layers, each checked against its digest.
    pub blobs: Blobs,
}

/// Reads an OCI image-layout tar holding one image (or an index whose Wasm
/// manifest is chosen as the shim would). Every blob is checked against its
/// digest and size. Holds the whole layout in memory.
///
/// # Errors
///
/// I/O errors, a missing or malformed `index.json`, manifest or config, a
/// missing blob, or a blob whose content does not match its digest.
pub fn read_layout_tar<R: io::Read>(input: R) -> Result<LayoutImage, ReadError> {
    let invalid = |m: String| ReadError::Invalid(m);
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != EntryType::Regular {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        io::Read::read_to_end(&mut entry, &mut data)?;
        files.insert(path, data);
    }
    let index = files
        .get("index.json")
        .ok_or_else(|| invalid("no index.json: not an OCI image layout".into()))?;
    let Document::Index(index) = parse_document(index).map_err(|e| invalid(e.to_string()))? else {
        return Err(invalid("index.json is not an image index".into()));
    };
    let blob = |d: &Descriptor| -> Result<Blob, ReadError> {
        let digest = d.digest().to_string();
        let data = files
            .get(&format!("blobs/sha256/{}", hex_part(&digest)))
            .ok_or_else(|| invalid(format!("blob {digest} is missing")))?;
        let blob = Blob::new(d.media_type().to_string(), data.clone());
        if blob.digest != digest || data.len() as u64 != d.size() {
            return Err(invalid(format!(
                "blob {digest} does not match its descriptor (content is {}, {} bytes)",
                blob.digest,
                data.len()
            )));
        }
        Ok(blob)
    };
    let mut top = match index.manifests().as_slice() {
        [one] => one.clone(),
        [] => return Err(invalid("index.json lists no image".into())),
        _ => choose_manifest(&index)
            .map_err(|e| invalid(e.to_string()))?
            .clone(),
    };
    let reference = top.annotations().as_ref().and_then(|a| {
        a.get(ANNOTATION_CONTAINERD_IMAGE_NAME)
            .or_else(|| a.get(ANNOTATION_REF_NAME))
            .cloned()
    });
    let mut manifest_blob = blob(&top)?;
    if let Document::Index(nested) =
        parse_document(&manifest_blob.data).map_err(|e| invalid(e.to_string()))?
    {
        top = choose_manifest(&nested)
            .map_err(|e| invalid(e.to_string()))?
            .clone();
        manifest_blob = blob(&top)?;
    }
    let Document::Manifest(manifest) =
        parse_document(&manifest_blob.data).map_err(|e| invalid(e.to_string()))?
    else {
        return Err(invalid("nested image indexes".into()));
    };
    let config = blob(manifest.config())?;
    let layers = manifest
        .layers()
        .iter()
        .map(blob)
        .collect::<Result<Vec<_>, _>>()?;
    let platform = match top.platform() {
        Some(p) => (p.os().to_string(), p.architecture().to_string()),
        None => {
            let v: serde_json::Value = serde_json::from_slice(&config.data).unwrap_or_default();
            let field = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or("unknown")
                    .to_owned()
            };
            (field("os"), field("architecture"))
        }
    };
    Ok(LayoutImage {
        reference,
        blobs: Blobs {
            manifest: manifest_blob,
            config,
            layers,
            platform,
        },
    })
}

/// Counts the bytes written through it.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::sha256_digest;
    use crate::image::{image_blobs, write_image_tar, Entry, ImageSpec};
    use std::io::Read;

    fn spec() -> ImageSpec {
        ImageSpec {
            reference: "docker.io/wasmpod/probe:p1".to_owned(),
            entries: vec![
                Entry::File {
                    path: "usr/bin/probe.wasm".to_owned(),
                    data: b"\0asm\x01\0\0\0".to_vec(),
                    mode: 0o755,
                },
                Entry::Symlink {
                    path: "bin".to_owned(),
                    target: "usr/bin".to_owned(),
                },
                Entry::Dir {
                    path: "./data/".to_owned(),
                    mode: 0o700,
                },
                Entry::File {
                    path: "data/deep/er/file.txt".to_owned(),
                    data: b"hello\n".to_vec(),
                    mode: 0o644,
                },
            ],
            entrypoint: vec!["/usr/bin/probe.wasm".to_owned()],
            cmd: vec!["args".to_owned()],
            env: vec!["A=1".to_owned(), "B=2".to_owned()],
            working_dir: Some("/data".to_owned()),
            os: "wasip1".to_owned(),
            architecture: "wasm".to_owned(),
            annotations: [
                ("z.last".to_owned(), "1".to_owned()),
                ("a.first".to_owned(), "2".to_owned()),
                ("m.middle".to_owned(), "3".to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn build(spec: &ImageSpec) -> (Built, Vec<u8>) {
        let mut out = Vec::new();
        let built = write_image_tar(spec, &mut out).expect("write image");
        (built, out)
    }

    /// Reads every regular file of a tar into a path -> contents map.
    fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(archive);
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            if entry.header().entry_type() != EntryType::Regular {
                continue;
            }
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            files.insert(path, data);
        }
        files
    }

    fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
        &files[&format!("blobs/sha256/{}", hex_part(digest))]
    }

    #[test]
    fn reproducible() {
        let (first, first_bytes) = build(&spec());
        let (second, second_bytes) = build(&spec());
        assert_eq!(first, second);
        assert_eq!(first_bytes, second_bytes);
        assert_eq!(first.size, first_bytes.len() as u64);
        // Input order of entries does not matter.
        let mut reversed = spec();
        reversed.entries.reverse();
        let (third, third_bytes) = build(&reversed);
        assert_eq!(first, third);
        assert_eq!(first_bytes, third_bytes);
    }

    #[test]
    fn digests_match_content() {
        let (built, bytes) = build(&spec());
        let files = files(&bytes);
        for digest in [&built.manifest_digest, &built.config_digest]
            .into_iter()
            .chain(&built.layer_digests)
        {
            assert_eq!(&sha256_digest(blob(&files, digest)), digest);
        }
        assert_eq!(files.len(), 5, "{:?}", files.keys().collect::<Vec<_>>());

        let layout: serde_json::Value = serde_json::from_slice(&files["oci-layout"]).expect("json");
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");

        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("json");
        let desc = &index["manifests"][0];
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(desc["digest"], built.manifest_digest.as_str());
        assert_eq!(
            desc["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(desc["platform"]["os"], "wasip1");
        assert_eq!(desc["platform"]["architecture"], "wasm");
        let reference = "docker.io/wasmpod/probe:p1";
        assert_eq!(desc["annotations"][ANNOTATION_REF_NAME], reference);
        assert_eq!(
            desc["annotations"][ANNOTATION_CONTAINERD_IMAGE_NAME],
            reference
        );

        let manifest_bytes = blob(&files, &built.manifest_digest);
        assert_eq!(desc["size"], manifest_bytes.len());
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).expect("json");
        assert_eq!(manifest["config"]["digest"], built.config_digest.as_str());
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(
            manifest["layers"][0]["digest"],
            built.layer_digests[0].as_str()
        );
        assert_eq!(
            manifest["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(manifest["annotations"]["m.middle"], "3");

        let config: serde_json::Value =
            serde_json::from_slice(blob(&files, &built.config_digest)).expect("json");
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            built.layer_digests[0].as_str()
        );
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/probe.wasm");
        assert_eq!(config["config"]["Cmd"][0], "args");
        assert_eq!(config["config"]["Env"][1], "B=2");
        assert_eq!(config["config"]["WorkingDir"], "/data");
    }

    #[test]
    fn layer_has_sorted_entries_and_parent_dirs() {
        let (built, bytes) = build(&spec());
        let files = files(&bytes);
        let layer = blob(&files, &built.layer_digests[0]);
        let mut archive = tar::Archive::new(layer);
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!(header.mtime().expect("mtime"), 0);
            assert_eq!(header.uid().expect("uid"), 0);
            assert_eq!(header.gid().expect("gid"), 0);
            assert_eq!(header.username().expect("username"), Some(""));
            assert_eq!(header.groupname().expect("groupname"), Some(""));
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mode = header.mode().expect("mode");
            seen.push((path, header.entry_type(), mode));
        }
        let expected = [
            ("bin", EntryType::Symlink, 0o777),
            ("data/", EntryType::Directory, 0o700),
            ("data/deep/", EntryType::Directory, 0o755),
            ("data/deep/er/", EntryType::Directory, 0o755),
            ("data/deep/er/file.txt", EntryType::Regular, 0o644),
            ("usr/", EntryType::Directory, 0o755),
            ("usr/bin/", EntryType::Directory, 0o755),
            ("usr/bin/probe.wasm", EntryType::Regular, 0o755),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(p, t, m)| (p.to_string(), *t, *m))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn bad_paths_rejected() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "./", "a/\0b"] {
            let mut spec = spec();
            spec.entries.push(Entry::File {
                path: bad.to_owned(),
                data: Vec::new(),
                mode: 0o644,
            });
            let err = write_image_tar(&spec, Vec::new()).expect_err(bad);
            assert!(
                matches!(&err, BuildError::InvalidPath { path, .. } if path == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn conflicting_entries_rejected() {
        let mut dup = spec();
        dup.entries.push(Entry::Dir {
            path: "usr/bin/probe.wasm/".to_owned(),
            mode: 0o755,
        });
        assert!(matches!(
            write_image_tar(&dup, Vec::new()),
            Err(BuildError::DuplicatePath { path }) if path == "usr/bin/probe.wasm"
        ));

        let mut under_file = spec();
        under_file.entries.push(Entry::Dir {
            path: "usr/bin/probe.wasm/x".to_owned(),
            mode: 0o755,
        });
        assert!(matches!(
            write_image_tar(&under_file, Vec::new()),
            Err(BuildError::ParentNotDirectory { parent, .. }) if parent == "usr/bin/probe.wasm"
        ));

        let mut bad_mode = spec();
        bad_mode.entries.push(Entry::Dir {
            path: "x".to_owned(),
            mode: 0o40755,
        });
        assert!(matches!(
            write_image_tar(&bad_mode, Vec::new()),
            Err(BuildError::InvalidMode { .. })
        ));
    }

    #[test]
    fn layouts_read_back_and_corruption_is_caught() {
        let (built, bytes) = build(&spec());
        let image = read_layout_tar(bytes.as_slice()).expect("read back");
        assert_eq!(
            image.reference.as_deref(),
            Some("docker.io/wasmpod/probe:p1")
        );
        assert_eq!(image.blobs, image_blobs(&spec()).expect("blobs"));
        assert_eq!(image.blobs.manifest.digest, built.manifest_digest);
        assert_eq!(
            image.blobs.platform,
            ("wasip1".to_owned(), "wasm".to_owned())
        );

        // Flip one byte of the layer blob: its digest no longer matches.
        let mut files = files(&bytes);
        let layer = format!("blobs/sha256/{}", hex_part(&built.layer_digests[0]));
        let last = files[&layer].len() - 1;
        files.get_mut(&layer).expect("layer")[last] ^= 0xff;
        let mut corrupt = tar::Builder::new(Vec::new());
        for (path, data) in &files {
            append_file(&mut corrupt, "test", path, data, 0o644).expect("append");
        }
        let corrupt = corrupt.into_inner().expect("tar");
        let err = read_layout_tar(corrupt.as_slice()).unwrap_err().to_string();
        assert!(
            err.contains(&built.layer_digests[0]) && err.contains("does not match"),
            "{err}"
        );

        // Not a layout at all.
        let err = read_layout_tar(&b""[..]).unwrap_err().to_string();
        assert!(err.contains("index.json"), "{err}");
    }
}
