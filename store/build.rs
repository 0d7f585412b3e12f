//! Generates the etcd v3 client from `proto/` (the part of etcd's API that
//! `EtcdStore` calls).
//!
//! As in `sched-proto`, the `.proto` files are compiled by `protox`, a
//! protobuf compiler written in Rust, into a `FileDescriptorSet` that
//! `tonic-prost-build` turns into code; so building this crate needs no
//! `protoc`. Only clients are generated: we never serve etcd's API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["etcdserverpb/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        // What `compile_protos` adds by itself and `compile_fds` does not:
        // the generated code is not ours to lint.
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_fds(files)?;
    Ok(())
}
