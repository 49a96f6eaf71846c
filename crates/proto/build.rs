//! Compiles proto/ with protox (no system protoc) and generates prost messages and tonic services.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "conclave/v1/kv.proto",
        "conclave/v1/cluster.proto",
        "conclave/v1/coordination.proto",
        "conclave/v1/pubsub.proto",
        "conclave/v1/rooms.proto",
        "conclave/peer/v1/peer.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
