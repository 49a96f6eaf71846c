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
    // Served by the nodes' gRPC reflection service.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
