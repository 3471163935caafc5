//! Manifests and indexes as containerd's content store or a registry hands
//! them over: parsing, platform choice and Wasm layer selection must never
//! panic, and a selected layer is always one of the manifest's Wasm layers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmpod_oci::artifact::{is_artifact, layer_name, select_layer, wasm_layers};
use wasmpod_oci::document::{choose_manifest, parse_document, Document};

fuzz_target!(|data: &[u8]| {
    // `HINT \0 DOCUMENT`: the hint doubles as the layer annotation and argv[0].
    let (hint, data) = match data.iter().position(|b| *b == 0) {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    match parse_document(data) {
        Ok(Document::Index(index)) => {
            let _ = choose_manifest(&index);
        }
        Ok(Document::Manifest(manifest)) => {
            let _ = is_artifact(&manifest);
            let layers = wasm_layers(&manifest);
            for l in &layers {
                let _ = layer_name(l);
            }
            for (annotation, arg0) in [(None, None), (hint, None), (None, hint), (hint, hint)] {
                if let Ok(chosen) = select_layer(&manifest, annotation, arg0) {
                    assert!(layers.iter().any(|l| std::ptr::eq(*l, chosen)));
                }
            }
        }
        Err(_) => {}
    }
});
