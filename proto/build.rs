//! Generates the API's messages and services from `proto/clustersched/v1/scheduler.proto`
//! (the public API) and `proto/clustersched/internal/v1/internal.proto`.
//!
//! The `.proto` files are compiled by `protox`, a protobuf compiler written in
//! Rust, into a `FileDescriptorSet` that `tonic-prost-build` turns into code;
//! so building this crate needs no `protoc` (and no `libprotobuf-dev` for the
//! well-known types, which protox carries itself). The same set, encoded, is
//! written to `OUT_DIR/descriptor.bin` for the servers' reflection service.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        [
            "clustersched/v1/scheduler.proto",
            "clustersched/internal/v1/internal.proto",
        ],
        ["proto"],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        // What `compile_protos` adds by itself and `compile_fds` does not:
        // the generated code is not ours to lint.
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(files)?;
    Ok(())
}
