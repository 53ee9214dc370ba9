//! Compiles `proto/rkms/v1/rkms.proto` in Rust (protox), so that no `protoc` is needed, into
//! the tonic server and client and the encoded descriptor set that reflection serves.

use std::path::PathBuf;

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("rkms/v1/rkms.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("rkms_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // The key leaves as reference-counted bytes the server wipes once sent.
        .bytes(".rkms.v1.GetKeyResponse.key")
        .compile_fds(descriptors)?;
    Ok(())
}
