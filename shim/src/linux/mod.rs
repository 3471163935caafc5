//! A Wasm pod's Linux containers (the pause sandbox, sidecars): run through
//! the node's runc from the same bundle ([`runc`]), with terminals when they
//! ask for one ([`console`]).

pub mod console;
pub mod runc;
